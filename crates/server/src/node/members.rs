//! The member registry: who is in the cluster, with names and URLs. Part of the replicated
//! state: changed only by applied log entries (configuration changes carrying a member record,
//! attribute and peer-URL updates) and saved in snapshots next to the MVCC state, so every
//! member holds the same registry at the same applied index.

use std::collections::BTreeMap;

use ballot_proto::etcdserverpb::Member;
use bytes::{Bytes, BytesMut};

use super::wire::{Reader, WireError, put_str, put_strings, put_varint};

/// One member as the registry knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: u64,
    /// Empty until the member has started and published its attributes (etcd shows such a
    /// member as "unstarted").
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl MemberRecord {
    pub fn encode_to(&self, buf: &mut BytesMut) {
        put_varint(buf, self.id);
        put_str(buf, &self.name);
        put_strings(buf, &self.peer_urls);
        put_strings(buf, &self.client_urls);
        put_varint(buf, u64::from(self.is_learner));
    }

    pub fn decode_from(reader: &mut Reader<'_>) -> Result<MemberRecord, WireError> {
        Ok(MemberRecord {
            id: reader.varint("member id")?,
            name: reader.string("member name")?,
            peer_urls: reader.strings("member peer URLs")?,
            client_urls: reader.strings("member client URLs")?,
            is_learner: reader.varint("member is_learner")? != 0,
        })
    }

    pub fn to_proto(&self) -> Member {
        Member {
            id: self.id,
            name: self.name.clone(),
            peer_ur_ls: self.peer_urls.clone(),
            client_ur_ls: self.client_urls.clone(),
            is_learner: self.is_learner,
        }
    }
}

/// The registry: every current member by ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    members: BTreeMap<u64, MemberRecord>,
}

impl Registry {
    pub fn from_records(records: impl IntoIterator<Item = MemberRecord>) -> Registry {
        Registry {
            members: records
                .into_iter()
                .map(|record| (record.id, record))
                .collect(),
        }
    }

    pub fn get(&self, id: u64) -> Option<&MemberRecord> {
        self.members.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.members.contains_key(&id)
    }

    pub fn records(&self) -> impl Iterator<Item = &MemberRecord> {
        self.members.values()
    }

    pub fn to_proto(&self) -> Vec<Member> {
        self.members.values().map(MemberRecord::to_proto).collect()
    }

    /// The member (other than `except`) already using one of `peer_urls`, if any.
    pub fn peer_url_owner(&self, peer_urls: &[String], except: u64) -> Option<u64> {
        self.members
            .values()
            .find(|member| {
                member.id != except && member.peer_urls.iter().any(|url| peer_urls.contains(url))
            })
            .map(|member| member.id)
    }

    /// The member whose peer URLs are exactly `peer_urls` (in any order).
    pub fn find_by_peer_urls(&self, peer_urls: &[String]) -> Option<&MemberRecord> {
        let mut wanted: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        self.members.values().find(|member| {
            let mut have: Vec<&str> = member.peer_urls.iter().map(String::as_str).collect();
            have.sort_unstable();
            have == wanted
        })
    }

    /// A member added (or re-added with fresh data) by a configuration change. A change without
    /// a record (the bootstrap entry) keeps what the registry already knows.
    pub fn add(&mut self, id: u64, record: Option<MemberRecord>, is_learner: bool) {
        match (record, self.members.get_mut(&id)) {
            (Some(mut record), existing) => {
                // A record proposed by MemberAdd has no name or client URLs yet; keep any the
                // member already published (a promotion re-sends the record).
                if let Some(existing) = existing {
                    if record.name.is_empty() {
                        record.name = std::mem::take(&mut existing.name);
                    }
                    if record.client_urls.is_empty() {
                        record.client_urls = std::mem::take(&mut existing.client_urls);
                    }
                }
                record.id = id;
                record.is_learner = is_learner;
                self.members.insert(id, record);
            }
            (None, Some(existing)) => existing.is_learner = is_learner,
            (None, None) => {
                self.members.insert(
                    id,
                    MemberRecord {
                        id,
                        is_learner,
                        ..MemberRecord::default()
                    },
                );
            }
        }
    }

    pub fn remove(&mut self, id: u64) {
        self.members.remove(&id);
    }

    /// A member published its name and client URLs (etcd's attribute update after start).
    pub fn set_attributes(&mut self, id: u64, name: String, client_urls: Vec<String>) {
        if let Some(member) = self.members.get_mut(&id) {
            member.name = name;
            member.client_urls = client_urls;
        }
    }

    pub fn set_peer_urls(&mut self, id: u64, peer_urls: Vec<String>) {
        if let Some(member) = self.members.get_mut(&id) {
            member.peer_urls = peer_urls;
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode_to(&mut buf);
        buf.freeze()
    }

    pub fn encode_to(&self, buf: &mut BytesMut) {
        put_varint(buf, self.members.len() as u64);
        for member in self.members.values() {
            member.encode_to(buf);
        }
    }

    pub fn decode_from(reader: &mut Reader<'_>) -> Result<Registry, WireError> {
        let count = reader.length("member count")?;
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            records.push(MemberRecord::decode_from(reader)?);
        }
        Ok(Registry::from_records(records))
    }

    pub fn decode(bytes: &Bytes) -> Result<Registry, WireError> {
        let mut reader = Reader::new(bytes);
        let registry = Registry::decode_from(&mut reader)?;
        reader.finish()?;
        Ok(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, url: &str) -> MemberRecord {
        MemberRecord {
            id,
            name: format!("m{id}"),
            peer_urls: vec![url.to_string()],
            client_urls: vec![format!("{url}0")],
            is_learner: false,
        }
    }

    #[test]
    fn registry_round_trips() {
        let registry = Registry::from_records([
            record(1, "http://127.0.0.1:1"),
            MemberRecord {
                is_learner: true,
                ..record(2, "http://127.0.0.1:2")
            },
        ]);
        assert_eq!(Registry::decode(&registry.encode()), Ok(registry));
    }

    #[test]
    fn add_keeps_published_attributes_and_remove_forgets() {
        let mut registry = Registry::from_records([record(1, "http://a:1")]);
        let added = MemberRecord {
            id: 1,
            peer_urls: vec!["http://a:1".into()],
            ..MemberRecord::default()
        };
        registry.add(1, Some(added), false);
        assert_eq!(registry.get(1).map(|m| m.name.as_str()), Some("m1"));
        registry.add(7, None, true);
        assert_eq!(registry.get(7).map(|m| m.is_learner), Some(true));
        assert_eq!(registry.peer_url_owner(&["http://a:1".into()], 9), Some(1));
        assert_eq!(registry.peer_url_owner(&["http://a:1".into()], 1), None);
        registry.remove(1);
        assert!(!registry.contains(1));
    }

    #[test]
    fn garbage_does_not_decode() {
        assert!(Registry::decode(&Bytes::from_static(&[3, 1])).is_err());
    }
}
