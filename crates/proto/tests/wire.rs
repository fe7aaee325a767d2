//! Wire-compatibility checks: the encodings below are what etcd's Go types
//! produce for the same values, so a mismatch here means etcd clients would
//! misread our messages.

use ballot_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchResponse,
    compare, kv_client::KvClient, kv_server::KvServer, request_op,
};
use ballot_proto::mvccpb::{Event, KeyValue, event::EventType};
use ballot_proto::{FILE_DESCRIPTOR_SET, etcdserverpb, v3electionpb, v3lockpb};
use bytes::Bytes;
use prost::Message;
use tonic::server::NamedService;

#[test]
fn range_request_key_is_field_one() {
    let request = RangeRequest {
        key: Bytes::from_static(b"foo"),
        limit: 1,
        ..Default::default()
    };
    // Field 1, wire type 2 (0x0a), length 3, "foo"; then field 3 varint (0x18) = 1.
    assert_eq!(
        request.encode_to_vec(),
        [0x0a, 0x03, b'f', b'o', b'o', 0x18, 0x01]
    );
}

#[test]
fn watch_response_events_use_tag_eleven() {
    let response = WatchResponse {
        watch_id: 7,
        events: vec![Event {
            r#type: EventType::Delete as i32,
            kv: None,
            prev_kv: None,
        }],
        ..Default::default()
    };
    // watch_id: field 2 varint (0x10) = 7. events: field 11, wire type 2 gives
    // (11 << 3) | 2 = 0x5a, then the 2-byte Event {type: DELETE} = 0x08 0x01.
    assert_eq!(
        response.encode_to_vec(),
        [0x10, 0x07, 0x5a, 0x02, 0x08, 0x01]
    );
}

#[test]
fn compare_range_end_uses_tag_sixty_four_and_lease_is_in_the_oneof() {
    let compare = Compare {
        result: compare::CompareResult::Greater as i32,
        target: compare::CompareTarget::Lease as i32,
        key: Bytes::from_static(b"a"),
        range_end: Bytes::from_static(b"b"),
        target_union: Some(compare::TargetUnion::Lease(5)),
    };
    // (64 << 3) | 2 = 514 encodes as the varint 0x82 0x04; lease is field 8
    // varint, tag 0x40.
    assert_eq!(
        compare.encode_to_vec(),
        [
            0x08, 0x01, // result = GREATER
            0x10, 0x04, // target = LEASE
            0x1a, 0x01, b'a', // key
            0x40, 0x05, // target_union.lease = 5
            0x82, 0x04, 0x01, b'b', // range_end
        ]
    );
}

#[test]
fn compare_target_union_field_numbers_match_etcd() {
    let cases = [
        (compare::TargetUnion::Version(1), 0x20),
        (compare::TargetUnion::CreateRevision(1), 0x28),
        (compare::TargetUnion::ModRevision(1), 0x30),
        (compare::TargetUnion::Lease(1), 0x40),
    ];
    for (target, expected_tag) in cases {
        let encoded = Compare {
            target_union: Some(target.clone()),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(encoded, [expected_tag, 0x01], "for {target:?}");
    }
    let value = Compare {
        target_union: Some(compare::TargetUnion::Value(Bytes::from_static(b"v"))),
        ..Default::default()
    };
    // value is field 7, length-delimited: (7 << 3) | 2 = 0x3a.
    assert_eq!(value.encode_to_vec(), [0x3a, 0x01, b'v']);
}

#[test]
fn nested_txn_request_round_trips() {
    let inner = TxnRequest {
        compare: vec![],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: Bytes::from_static(b"k2"),
                    range_end: Bytes::from_static(b"k3"),
                    prev_kv: true,
                },
            )),
        }],
        failure: vec![],
    };
    let txn = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Version as i32,
            key: Bytes::from_static(b"k1"),
            target_union: Some(compare::TargetUnion::Version(0)),
            range_end: Bytes::new(),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: Bytes::from_static(b"k1"),
                    value: Bytes::from_static(b"v1"),
                    lease: 42,
                    ..Default::default()
                })),
            },
            RequestOp {
                request: Some(request_op::Request::RequestTxn(inner)),
            },
        ],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: Bytes::from_static(b"k1"),
                ..Default::default()
            })),
        }],
    };
    let encoded = Bytes::from(txn.encode_to_vec());
    let decoded = match TxnRequest::decode(encoded.clone()) {
        Ok(decoded) => decoded,
        Err(error) => panic!("decoding our own TxnRequest encoding failed: {error}"),
    };
    assert_eq!(decoded, txn);
    // The explicit Version(0) must survive: inside a oneof, a default value is
    // still encoded, and etcd relies on that to express "key does not exist".
    assert_eq!(
        decoded.compare[0].target_union,
        Some(compare::TargetUnion::Version(0))
    );
    // Re-encoding the decoded message is byte-identical.
    assert_eq!(decoded.encode_to_vec(), encoded);
}

#[test]
fn key_value_field_numbers_match_etcd() {
    let kv = KeyValue {
        key: Bytes::from_static(b"k"),
        create_revision: 2,
        mod_revision: 3,
        version: 4,
        value: Bytes::from_static(b"v"),
        lease: 6,
    };
    assert_eq!(
        kv.encode_to_vec(),
        [
            0x0a, 0x01, b'k', 0x10, 0x02, 0x18, 0x03, 0x20, 0x04, 0x2a, 0x01, b'v', 0x30, 0x06
        ]
    );
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    // Tag for field 1 length-delimited claiming 5 bytes, but only 1 follows.
    assert!(RangeRequest::decode(&[0x0a, 0x05, b'f'][..]).is_err());
}

#[test]
fn grpc_service_names_match_etcd() {
    // The service name forms the HTTP/2 path (`/etcdserverpb.KV/Range`), so it
    // must match etcd exactly for clients to reach our handlers.
    // NamedService is implemented for every type parameter, so `()` suffices.
    assert_eq!(<KvServer<()> as NamedService>::NAME, "etcdserverpb.KV");
    assert_eq!(etcdserverpb::kv_server::SERVICE_NAME, "etcdserverpb.KV");
    assert_eq!(
        etcdserverpb::watch_server::SERVICE_NAME,
        "etcdserverpb.Watch"
    );
    assert_eq!(
        etcdserverpb::lease_server::SERVICE_NAME,
        "etcdserverpb.Lease"
    );
    assert_eq!(
        etcdserverpb::cluster_server::SERVICE_NAME,
        "etcdserverpb.Cluster"
    );
    assert_eq!(
        etcdserverpb::maintenance_server::SERVICE_NAME,
        "etcdserverpb.Maintenance"
    );
    assert_eq!(etcdserverpb::auth_server::SERVICE_NAME, "etcdserverpb.Auth");
    assert_eq!(v3lockpb::lock_server::SERVICE_NAME, "v3lockpb.Lock");
    assert_eq!(
        v3electionpb::election_server::SERVICE_NAME,
        "v3electionpb.Election"
    );
}

#[test]
fn client_stub_exists_for_kv() {
    // A compile-time check that the client is generated; the type is usable
    // over any tonic channel.
    fn assert_client<T>(_: Option<KvClient<T>>) {}
    assert_client::<tonic::transport::Channel>(None);
}

/// The two fields of `google.protobuf.FileDescriptorSet` / `FileDescriptorProto`
/// this test reads; prost skips every other field while decoding.
#[derive(Clone, PartialEq, prost::Message)]
struct DescriptorSetPackages {
    #[prost(message, repeated, tag = "1")]
    file: Vec<DescriptorPackage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct DescriptorPackage {
    #[prost(string, optional, tag = "2")]
    package: Option<String>,
}

#[test]
fn file_descriptor_set_lists_every_package() {
    let set = match DescriptorSetPackages::decode(FILE_DESCRIPTOR_SET) {
        Ok(set) => set,
        Err(error) => panic!("embedded descriptor set does not decode: {error}"),
    };
    let mut packages: Vec<String> = set
        .file
        .into_iter()
        .filter_map(|file| file.package)
        .collect();
    packages.sort();
    assert_eq!(
        packages,
        [
            "authpb",
            "etcdserverpb",
            "mvccpb",
            "v3electionpb",
            "v3lockpb"
        ]
    );
}
