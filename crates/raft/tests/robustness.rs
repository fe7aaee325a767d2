//! Peer input never panics the core: arbitrary (well-typed) messages, with nonsense indexes,
//! terms and senders, are stepped into a leader and into a follower; each step either is
//! accepted or returns a `StepError`, and the node keeps producing Readys.

mod harness;

use ballot_raft::*;
use bytes::Bytes;
use harness::Cluster;
use proptest::prelude::*;

fn small() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..8, Just(u64::MAX), Just(u64::MAX - 1)]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    proptest::collection::vec((small(), small(), any::<bool>()), 0..4).prop_map(|raw| {
        raw.into_iter()
            .map(|(term, index, conf)| Entry {
                term,
                index,
                kind: if conf {
                    EntryKind::ConfChange
                } else {
                    EntryKind::Normal
                },
                data: Bytes::from_static(b"\x00\x01\x04"),
            })
            .collect()
    })
}

fn conf_state() -> impl Strategy<Value = ConfState> {
    let ids = proptest::collection::vec(0u64..6, 0..4);
    (ids.clone(), ids.clone(), ids.clone(), ids, any::<bool>()).prop_map(
        |(voters, voters_outgoing, learners, learners_next, auto_leave)| ConfState {
            voters,
            voters_outgoing,
            learners,
            learners_next,
            auto_leave,
        },
    )
}

fn body() -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (small(), small()).prop_map(|(last_log_index, last_log_term)| MessageBody::PreVote {
            last_log_index,
            last_log_term
        }),
        any::<bool>().prop_map(|reject| MessageBody::PreVoteResponse { reject }),
        (small(), small(), any::<bool>()).prop_map(|(i, t, leader_transfer)| MessageBody::Vote {
            last_log_index: i,
            last_log_term: t,
            leader_transfer
        }),
        any::<bool>().prop_map(|reject| MessageBody::VoteResponse { reject }),
        (small(), small(), entries(), small()).prop_map(
            |(prev_log_index, prev_log_term, entries, commit)| {
                MessageBody::Append {
                    prev_log_index,
                    prev_log_term,
                    entries,
                    commit,
                }
            }
        ),
        (any::<bool>(), small(), small(), small()).prop_map(
            |(reject, index, hint_index, hint_term)| {
                MessageBody::AppendResponse {
                    reject,
                    index,
                    hint_index,
                    hint_term,
                }
            }
        ),
        (small(), small())
            .prop_map(|(commit, read_ctx)| MessageBody::Heartbeat { commit, read_ctx }),
        small().prop_map(|read_ctx| MessageBody::HeartbeatResponse { read_ctx }),
        (small(), small(), conf_state()).prop_map(|(index, term, conf)| MessageBody::Snapshot {
            meta: SnapshotMeta { index, term, conf }
        }),
        Just(MessageBody::TimeoutNow),
        small().prop_map(|ctx| MessageBody::ReadIndex { ctx }),
        (small(), small()).prop_map(|(ctx, index)| MessageBody::ReadIndexResponse { ctx, index }),
    ]
}

fn message() -> impl Strategy<Value = (u64, u64, MessageBody)> {
    (0u64..6, small(), body())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_messages_never_panic(messages in proptest::collection::vec(message(), 1..30)) {
        let mut template = Config::new(1);
        template.pre_vote = false;
        let mut cluster = Cluster::new(3, template);
        cluster.stabilize();
        cluster.node(1).campaign();
        cluster.stabilize();
        let _ = cluster.propose(1, "x");
        cluster.stabilize();
        for (from, term, body) in messages {
            for to in [1, 2] {
                let _ = cluster.node(to).step(Message { from, to, term, body: body.clone() });
                cluster.process_ready(to);
                cluster.node(to).tick();
            }
        }
        let _ = cluster.node(1).status();
    }
}
