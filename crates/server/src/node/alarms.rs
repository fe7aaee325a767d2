//! The cluster's alarms, as etcd keeps them: a set of (member, alarm) pairs that is part of the
//! replicated state. An alarm is raised or lifted only by an applied log entry
//! ([`super::envelope::Body::Alarm`]), so every member holds the same set at the same applied
//! index, it is saved in snapshots next to the registry, and it survives restarts. While any
//! member's NOSPACE alarm is up, every member refuses at apply time what would grow the state
//! (etcd's "capped" applier), so that all members refuse the same entries.

use std::collections::BTreeSet;

use ballot_proto::etcdserverpb::{AlarmMember, AlarmType, alarm_request::AlarmAction};
use bytes::BytesMut;

use super::wire::{Reader, WireError, put_varint};

/// What an alarm entry asks for (etcd's `AlarmRequest.action`, without GET, which is a read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmChange {
    Activate,
    Deactivate,
}

impl AlarmChange {
    pub fn code(self) -> u64 {
        match self {
            AlarmChange::Activate => AlarmAction::Activate as u64,
            AlarmChange::Deactivate => AlarmAction::Deactivate as u64,
        }
    }

    pub fn from_code(code: u64) -> Result<AlarmChange, WireError> {
        match code {
            code if code == AlarmAction::Activate as u64 => Ok(AlarmChange::Activate),
            code if code == AlarmAction::Deactivate as u64 => Ok(AlarmChange::Deactivate),
            tag => Err(WireError::UnknownTag {
                what: "alarm action",
                tag,
            }),
        }
    }
}

/// The raised alarms: `(member ID, AlarmType as i32)`, NONE never among them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Alarms {
    raised: BTreeSet<(u64, i32)>,
}

impl Alarms {
    /// Applies an alarm entry; returns the alarm it changed (none when it was already in the
    /// asked state, or names no alarm), which is what etcd answers.
    pub fn apply(&mut self, change: AlarmChange, member_id: u64, alarm: i32) -> Vec<AlarmMember> {
        if alarm == AlarmType::None as i32 || AlarmType::try_from(alarm).is_err() {
            return Vec::new();
        }
        let changed = match change {
            AlarmChange::Activate => self.raised.insert((member_id, alarm)),
            AlarmChange::Deactivate => self.raised.remove(&(member_id, alarm)),
        };
        if changed {
            vec![AlarmMember { member_id, alarm }]
        } else {
            Vec::new()
        }
    }

    /// The raised alarms of type `alarm`, or all of them for NONE (etcd's `alarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|(_, raised)| alarm == AlarmType::None as i32 || *raised == alarm)
            .map(|&(member_id, alarm)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether any member's NOSPACE alarm is up.
    pub fn nospace(&self) -> bool {
        self.raised
            .iter()
            .any(|(_, alarm)| *alarm == AlarmType::Nospace as i32)
    }

    /// Whether any member's CORRUPT alarm is up.
    pub fn corrupt(&self) -> bool {
        self.raised
            .iter()
            .any(|(_, alarm)| *alarm == AlarmType::Corrupt as i32)
    }

    pub fn contains(&self, member_id: u64, alarm: AlarmType) -> bool {
        self.raised.contains(&(member_id, alarm as i32))
    }

    pub fn encode_to(&self, buf: &mut BytesMut) {
        put_varint(buf, self.raised.len() as u64);
        for &(member_id, alarm) in &self.raised {
            put_varint(buf, member_id);
            put_varint(buf, alarm as u64);
        }
    }

    pub fn decode_from(reader: &mut Reader<'_>) -> Result<Alarms, WireError> {
        let count = reader.length("alarm count")?;
        let mut raised = BTreeSet::new();
        for _ in 0..count {
            let member_id = reader.varint("alarm member")?;
            let alarm = reader.varint("alarm type")?;
            let alarm = i32::try_from(alarm)
                .ok()
                .filter(|alarm| {
                    *alarm != AlarmType::None as i32 && AlarmType::try_from(*alarm).is_ok()
                })
                .ok_or(WireError::UnknownTag {
                    what: "alarm type",
                    tag: alarm,
                })?;
            raised.insert((member_id, alarm));
        }
        Ok(Alarms { raised })
    }
}

/// The name etcd prints for an alarm type (`AlarmType.String()`).
pub fn alarm_name(alarm: i32) -> &'static str {
    match AlarmType::try_from(alarm) {
        Ok(AlarmType::None) => "NONE",
        Ok(AlarmType::Nospace) => "NOSPACE",
        Ok(AlarmType::Corrupt) => "CORRUPT",
        Err(_) => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const NOSPACE: i32 = AlarmType::Nospace as i32;
    const CORRUPT: i32 = AlarmType::Corrupt as i32;

    #[test]
    fn activate_and_deactivate_report_only_what_changed() {
        let mut alarms = Alarms::default();
        assert_eq!(
            alarms.apply(AlarmChange::Activate, 7, NOSPACE),
            vec![AlarmMember {
                member_id: 7,
                alarm: NOSPACE
            }]
        );
        assert!(alarms.apply(AlarmChange::Activate, 7, NOSPACE).is_empty());
        assert!(alarms.nospace());
        assert!(alarms.apply(AlarmChange::Deactivate, 8, NOSPACE).is_empty());
        assert!(alarms.apply(AlarmChange::Deactivate, 7, CORRUPT).is_empty());
        assert_eq!(alarms.apply(AlarmChange::Deactivate, 7, NOSPACE).len(), 1);
        assert!(!alarms.nospace());
        assert!(alarms.get(AlarmType::None as i32).is_empty());
    }

    #[test]
    fn none_and_unknown_types_are_never_raised() {
        let mut alarms = Alarms::default();
        assert!(alarms.apply(AlarmChange::Activate, 1, 0).is_empty());
        assert!(alarms.apply(AlarmChange::Activate, 1, 99).is_empty());
        assert_eq!(alarms, Alarms::default());
    }

    #[test]
    fn get_filters_by_type_and_none_means_all() {
        let mut alarms = Alarms::default();
        alarms.apply(AlarmChange::Activate, 2, CORRUPT);
        alarms.apply(AlarmChange::Activate, 1, NOSPACE);
        alarms.apply(AlarmChange::Activate, 3, NOSPACE);
        assert_eq!(alarms.get(AlarmType::None as i32).len(), 3);
        let nospace: Vec<u64> = alarms.get(NOSPACE).iter().map(|a| a.member_id).collect();
        assert_eq!(nospace, vec![1, 3]);
        assert!(alarms.contains(2, AlarmType::Corrupt));
        assert!(!alarms.contains(2, AlarmType::Nospace));
    }

    #[test]
    fn round_trips_and_refuses_bad_types() {
        let mut alarms = Alarms::default();
        alarms.apply(AlarmChange::Activate, u64::MAX, NOSPACE);
        alarms.apply(AlarmChange::Activate, 5, CORRUPT);
        let mut buf = BytesMut::new();
        alarms.encode_to(&mut buf);
        let bytes = buf.freeze();
        let mut reader = Reader::new(&bytes);
        assert_eq!(Alarms::decode_from(&mut reader), Ok(alarms));
        assert!(reader.is_empty());

        for bad in [&[1u8, 5, 0][..], &[1, 5, 42], &[2, 5, 1]] {
            let bytes = Bytes::copy_from_slice(bad);
            assert!(
                Alarms::decode_from(&mut Reader::new(&bytes)).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn actions_keep_etcds_numbers() {
        for change in [AlarmChange::Activate, AlarmChange::Deactivate] {
            assert_eq!(AlarmChange::from_code(change.code()), Ok(change));
        }
        assert!(AlarmChange::from_code(AlarmAction::Get as u64).is_err());
        assert_eq!(alarm_name(NOSPACE), "NOSPACE");
    }
}
