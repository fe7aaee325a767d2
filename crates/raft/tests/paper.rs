//! One test per rule of the Raft paper (and the thesis where it extends the paper), each named
//! after the section it checks, plus the persistence contract of `Ready`.

mod harness;

use ballot_raft::*;
use bytes::Bytes;
use harness::Cluster;

fn quiet_config() -> Config {
    let mut config = Config::new(1);
    config.pre_vote = false;
    config.check_quorum = false;
    config
}

/// A 3-node cluster with node 1 elected.
fn elected(template: Config) -> Cluster {
    let mut cluster = Cluster::new(3, template);
    cluster.stabilize();
    cluster.node(1).campaign();
    cluster.stabilize();
    assert_eq!(cluster.status(1).role, Role::Leader);
    cluster.take_trace();
    cluster
}

fn message(from: NodeId, to: NodeId, term: Term, body: MessageBody) -> Message {
    Message {
        from,
        to,
        term,
        body,
    }
}

fn entry(index: Index, term: Term, data: &'static str) -> Entry {
    Entry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::from_static(data.as_bytes()),
    }
}

/// A follower whose durable log holds `terms` (index 1 = the bootstrap configuration).
fn follower_with_log(id: NodeId, terms: &[Term]) -> RaftNode {
    let change = ConfChange {
        transition: ConfChangeTransition::Auto,
        changes: [1, 2, 3]
            .iter()
            .map(|&node| ConfChangeSingle {
                kind: ConfChangeKind::AddVoter,
                node,
            })
            .collect(),
        context: Bytes::new(),
    };
    let mut entries = vec![Entry {
        term: 1,
        index: 1,
        kind: EntryKind::ConfChange,
        data: change.encode(),
    }];
    for (position, &term) in terms.iter().enumerate() {
        entries.push(entry(position as Index + 2, term, "x"));
    }
    let last_term = entries.last().map_or(1, |entry| entry.term);
    let mut config = quiet_config();
    config.id = id;
    let state = RestoreState {
        hard_state: HardState {
            term: last_term,
            vote: 0,
            commit: 1,
        },
        snapshot: None,
        entries,
        applied: 0,
    };
    RaftNode::restore(config, state).expect("valid restore")
}

fn vote_reply(node: &mut RaftNode) -> Option<bool> {
    let ready = node.ready();
    ready
        .persisted_messages
        .iter()
        .chain(&ready.messages)
        .find_map(|message| match message.body {
            MessageBody::VoteResponse { reject } | MessageBody::PreVoteResponse { reject } => {
                Some(!reject)
            }
            _ => None,
        })
}

#[test]
fn section_5_1_a_higher_term_turns_a_leader_into_a_follower() {
    let mut cluster = elected(quiet_config());
    let term = cluster.status(1).term;
    cluster
        .node(1)
        .step(message(
            2,
            1,
            term + 3,
            MessageBody::Heartbeat {
                commit: 0,
                read_ctx: 0,
            },
        ))
        .expect("valid message");
    let status = cluster.status(1);
    assert_eq!(
        (status.role, status.term, status.leader),
        (Role::Follower, term + 3, 2)
    );
}

#[test]
fn section_5_1_a_stale_term_is_refused_and_answered_with_the_current_term() {
    let mut node = follower_with_log(2, &[3]);
    node.ready();
    let stale = message(
        1,
        2,
        2,
        MessageBody::Append {
            prev_log_index: 1,
            prev_log_term: 1,
            entries: vec![entry(2, 2, "stale")],
            commit: 2,
        },
    );
    node.step(stale).expect("valid message");
    let status = node.status();
    assert_eq!((status.last_index, status.term), (2, 3));
    let ready = node.ready();
    let answer = ready.messages.iter().find(|message| message.to == 1);
    assert_eq!(answer.map(|message| message.term), Some(3));
}

/// Figure 2, RequestVote: "reply false if term < currentTerm", and the reply carries the
/// current term so that the candidate adopts it (testdata/stale_candidate.txt shows why a
/// dropped request can leave a cluster without a leader); only members are answered.
#[test]
fn section_5_1_a_stale_vote_request_is_refused_with_the_current_term() {
    let mut node = follower_with_log(2, &[3]);
    node.ready();
    let stale_vote_from = |from| {
        message(
            from,
            2,
            2,
            MessageBody::Vote {
                last_log_index: 9,
                last_log_term: 2,
                leader_transfer: false,
            },
        )
    };
    node.step(stale_vote_from(1)).expect("valid message");
    let status = node.status();
    assert_eq!(
        (status.term, status.vote),
        (3, 0),
        "no vote, no term change"
    );
    let ready = node.ready();
    let answers: Vec<_> = ready
        .persisted_messages
        .iter()
        .chain(&ready.messages)
        .filter(|message| message.to == 1)
        .map(|message| (message.term, message.body.clone()))
        .collect();
    assert_eq!(
        answers,
        vec![(3, MessageBody::VoteResponse { reject: true })]
    );

    // A sender outside the configuration (most likely removed without knowing it) is not told
    // the term, as in etcd: it would only depose the next leader sooner (thesis §4.2.3).
    node.step(stale_vote_from(4)).expect("valid message");
    let ready = node.ready();
    assert!(
        ready.persisted_messages.is_empty() && ready.messages.is_empty(),
        "no answer to a non-member: {ready:?}"
    );
}

#[test]
fn section_5_2_election_timeouts_are_randomized_in_t_to_2t() {
    let election_tick = 10;
    let mut timeouts = std::collections::BTreeSet::new();
    for seed in 0..50 {
        let mut config = quiet_config();
        config.seed = seed;
        config.election_tick = election_tick;
        let mut node = RaftNode::bootstrap(config, &[1, 2, 3]).expect("valid");
        let mut ticks = 0;
        while node.status().role == Role::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks < 2 * election_tick, "no election within 2T");
        }
        assert!(ticks >= election_tick, "election after {ticks} < T ticks");
        timeouts.insert(ticks);
    }
    assert!(timeouts.len() > 3, "timeouts are spread: {timeouts:?}");
}

#[test]
fn section_5_2_at_most_one_vote_per_term() {
    let mut node = follower_with_log(3, &[]);
    node.ready();
    let vote = |from| {
        message(
            from,
            3,
            5,
            MessageBody::Vote {
                last_log_index: 1,
                last_log_term: 1,
                leader_transfer: false,
            },
        )
    };
    node.step(vote(1)).expect("valid");
    assert_eq!(vote_reply(&mut node), Some(true));
    node.step(vote(2)).expect("valid");
    assert_eq!(
        vote_reply(&mut node),
        Some(false),
        "second candidate of the term"
    );
    node.step(vote(1)).expect("valid");
    assert_eq!(
        vote_reply(&mut node),
        Some(true),
        "the same candidate again"
    );
}

#[test]
fn section_5_2_a_split_vote_elects_nobody() {
    let mut cluster = Cluster::new(4, quiet_config());
    cluster.stabilize();
    cluster.partition(&[vec![1, 2], vec![3, 4]]);
    cluster.node(1).campaign();
    cluster.node(3).campaign();
    cluster.stabilize();
    assert_eq!(
        cluster.leader(),
        None,
        "two votes of four are not a majority"
    );
}

#[test]
fn section_5_3_a_follower_refuses_entries_whose_predecessor_does_not_match() {
    let mut node = follower_with_log(2, &[1, 1]);
    node.ready();
    let append = message(
        1,
        2,
        2,
        MessageBody::Append {
            prev_log_index: 3,
            prev_log_term: 2,
            entries: vec![entry(4, 2, "y")],
            commit: 4,
        },
    );
    node.step(append).expect("valid message");
    assert_eq!(node.status().last_index, 3);
    let ready = node.ready();
    assert!(
        ready.messages.is_empty(),
        "the rejection waits for the new term to be durable"
    );
    let hint = ready
        .persisted_messages
        .iter()
        .find_map(|message| match message.body {
            MessageBody::AppendResponse {
                reject: true,
                index,
                hint_index,
                hint_term,
            } => Some((index, hint_index, hint_term)),
            _ => None,
        });
    assert_eq!(
        hint,
        Some((3, 3, 1)),
        "rejects index 3, hints its last entry of term <= 2"
    );
}

#[test]
fn section_5_3_conflicting_entries_are_replaced_and_later_ones_kept_out() {
    let mut node = follower_with_log(2, &[1, 1, 1]);
    node.ready();
    let append = message(
        1,
        2,
        2,
        MessageBody::Append {
            prev_log_index: 2,
            prev_log_term: 1,
            entries: vec![entry(3, 2, "new")],
            commit: 1,
        },
    );
    node.step(append).expect("valid message");
    let ready = node.ready();
    assert_eq!(
        ready.entries,
        vec![entry(3, 2, "new")],
        "persist from the conflict on"
    );
    assert_eq!(node.status().last_index, 3, "the old entry 4 is truncated");
}

#[test]
fn section_5_4_1_a_higher_last_term_is_more_up_to_date_even_when_shorter() {
    let mut voter = follower_with_log(3, &[1, 1, 1, 1]);
    voter.ready();
    let request = |from, last_log_index, last_log_term| {
        message(
            from,
            3,
            9,
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                leader_transfer: false,
            },
        )
    };
    voter.step(request(1, 2, 2)).expect("valid");
    assert_eq!(
        vote_reply(&mut voter),
        Some(true),
        "term 2 beats a longer term-1 log"
    );
    let mut voter = follower_with_log(3, &[2]);
    voter.ready();
    voter.step(request(1, 9, 1)).expect("valid");
    assert_eq!(
        vote_reply(&mut voter),
        Some(false),
        "a longer log of an older term loses"
    );
    let mut voter = follower_with_log(3, &[2, 2]);
    voter.ready();
    voter.step(request(1, 2, 2)).expect("valid");
    assert_eq!(
        vote_reply(&mut voter),
        Some(false),
        "same last term, shorter log loses"
    );
}

/// Figure 8 set-up: node 1 appends an entry in term 2 that only it has, restarts, wins a later
/// term, and replicates the old entry (alone, one entry per Append) to node 2. Returns when the
/// leader learns that node 2 has it, with the old entry's (index, term).
fn old_term_entry_on_a_majority(template: Config) -> (Cluster, Index, Term) {
    let mut template = template;
    template.max_msg_bytes = 1; // one entry per Append, so the old entry travels alone
    let mut cluster = elected(template);
    cluster.partition(&[vec![1], vec![2, 3]]);
    let (old_index, old_term) = cluster.propose(1, "old").expect("leader accepts");
    cluster.stabilize();
    // The old leader restarts (keeping its durable log) and wins a later term.
    cluster.crash(1);
    cluster.restart(1);
    cluster.heal();
    cluster.node(1).campaign();
    cluster.stabilize_until(|cluster| {
        let status = cluster.status(1);
        status.role == Role::Leader
            && status
                .progress
                .iter()
                .any(|(id, pr)| *id == 2 && pr.match_index >= old_index)
    });
    (cluster, old_index, old_term)
}

/// Raft paper §5.4.2 and figure 8: an entry of an earlier term on a majority is not committed
/// until an entry of the leader's own term is.
#[test]
fn section_5_4_2_an_old_term_entry_is_not_committed_by_counting_replicas() {
    let (mut cluster, old_index, old_term) = old_term_entry_on_a_majority(quiet_config());
    let status = cluster.status(1);
    assert!(status.term > old_term);
    assert!(
        status.commit < old_index,
        "on a majority (1 and 2), yet not committed"
    );
    cluster.stabilize();
    assert!(
        cluster.status(1).commit > old_index,
        "committed with the new term's no-op"
    );
    assert_eq!(cluster.applied_data(2), vec!["old".to_string()]);
}

/// The test-only defect switch really breaks the rule above (the simulator relies on it).
#[cfg(feature = "defects")]
#[test]
fn defect_commit_old_term_by_count_breaks_section_5_4_2() {
    let mut template = quiet_config();
    template.defect = Defect::CommitOldTermByCount;
    let (cluster, old_index, _) = old_term_entry_on_a_majority(template);
    assert!(cluster.status(1).commit >= old_index);
}

#[test]
fn one_member_cluster_commits_alone_through_on_persisted() {
    let mut node = RaftNode::bootstrap(quiet_config(), &[1]).expect("valid");
    let ready = node.ready();
    node.on_persisted(ready.number);
    node.campaign();
    let ready = node.ready();
    assert_eq!(
        node.status().role,
        Role::Candidate,
        "its vote is not durable yet"
    );
    node.on_persisted(ready.number);
    assert_eq!(node.status().role, Role::Leader);
    let (index, _) = node.propose(Bytes::from_static(b"solo")).expect("leader");
    let ready = node.ready();
    assert!(ready.entries.iter().any(|entry| entry.index == index));
    assert!(
        node.status().commit < index,
        "not committed before it is durable"
    );
    node.on_persisted(ready.number);
    assert_eq!(node.status().commit, index);
    let ready = node.ready();
    assert!(
        ready
            .committed_entries
            .iter()
            .any(|entry| entry.index == index)
    );
}

/// A one-voter cluster adds a second voter: the change is committed by the configuration it
/// replaces (the leader alone), as etcd's apply-time configurations do, so the new member can
/// then be told it was added and join; the next entries need both voters.
#[test]
fn a_single_voter_commits_the_addition_of_a_second_voter_alone() {
    let mut node = RaftNode::bootstrap(quiet_config(), &[1]).expect("valid");
    let ready = node.ready();
    node.on_persisted(ready.number);
    node.campaign();
    let ready = node.ready();
    node.on_persisted(ready.number);
    assert_eq!(node.status().role, Role::Leader);
    let ready = node.ready();
    node.on_persisted(ready.number);
    let (index, _) = node
        .propose_conf_change(ConfChange {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle {
                kind: ConfChangeKind::AddVoter,
                node: 2,
            }],
            context: Bytes::new(),
        })
        .expect("a leader whose term's entry is committed");
    let ready = node.ready();
    node.on_persisted(ready.number);
    assert_eq!(node.status().commit, index, "committed without node 2");
    let (next, _) = node.propose(Bytes::from_static(b"after")).expect("leader");
    let ready = node.ready();
    node.on_persisted(ready.number);
    assert_eq!(
        node.status().commit,
        index,
        "entry {next} waits for the new voter"
    );
}

#[test]
fn ready_separates_messages_that_promise_durable_state() {
    let mut cluster = Cluster::new(3, quiet_config());
    cluster.stabilize();
    cluster.node(1).campaign();
    let ready = cluster.node(1).ready();
    assert!(
        ready
            .messages
            .iter()
            .all(|m| matches!(m.body, MessageBody::Vote { .. })),
        "vote requests leave at once"
    );
    for request in ready.messages {
        let to = request.to;
        cluster.node(to).step(request).expect("valid");
        let answer = cluster.node(to).ready();
        assert!(answer.hard_state.is_some(), "the vote is to be persisted");
        assert!(answer.messages.is_empty());
        assert_eq!(
            answer.persisted_messages.len(),
            1,
            "the grant waits for the disk"
        );
    }
}

#[test]
fn leader_sends_appends_before_its_own_write_is_durable() {
    let mut cluster = elected(quiet_config());
    let (index, _) = cluster.propose(1, "x").expect("leader");
    let ready = cluster.node(1).ready();
    assert!(ready.entries.iter().any(|entry| entry.index == index));
    let appends = ready
        .messages
        .iter()
        .filter(|m| matches!(&m.body, MessageBody::Append { entries, .. } if !entries.is_empty()))
        .count();
    assert_eq!(
        appends, 2,
        "replication overlaps the leader's own write (thesis §10.2.1)"
    );
}

#[test]
fn proposals_are_refused_with_typed_errors() {
    let mut template = quiet_config();
    template.max_proposal_bytes = 8;
    template.max_uncommitted_bytes = 16;
    let mut cluster = elected(template);
    assert_eq!(
        cluster.propose(2, "x"),
        Err(ProposeError::NotLeader { leader: Some(1) })
    );
    assert_eq!(
        cluster.propose(1, "much too large"),
        Err(ProposeError::TooLarge { size: 14, max: 8 })
    );
    assert_eq!(
        cluster.node(1).propose_batch(Vec::new()),
        Err(ProposeError::EmptyBatch)
    );
    cluster.partition(&[vec![1], vec![2, 3]]);
    cluster.propose(1, "12345678").expect("room");
    cluster.propose(1, "12345678").expect("room");
    assert!(matches!(
        cluster.propose(1, "1"),
        Err(ProposeError::UncommittedFull { .. })
    ));
}

#[test]
fn malformed_or_misdirected_messages_are_errors_not_panics() {
    let mut node = follower_with_log(2, &[1]);
    let misdirected = message(1, 3, 1, MessageBody::TimeoutNow);
    assert!(matches!(
        node.step(misdirected),
        Err(StepError::WrongRecipient { .. })
    ));
    let from_nobody = message(0, 2, 1, MessageBody::TimeoutNow);
    assert!(matches!(
        node.step(from_nobody),
        Err(StepError::InvalidSender { .. })
    ));
    let gap = message(
        1,
        2,
        1,
        MessageBody::Append {
            prev_log_index: 2,
            prev_log_term: 1,
            entries: vec![entry(5, 1, "gap")],
            commit: 0,
        },
    );
    assert!(matches!(node.step(gap), Err(StepError::Malformed { .. })));
    assert_eq!(node.status().last_index, 2);
}

#[test]
fn restore_rebuilds_the_configuration_from_the_snapshot_and_the_log() {
    let joint = ConfChange {
        transition: ConfChangeTransition::JointExplicit,
        changes: vec![ConfChangeSingle {
            kind: ConfChangeKind::AddVoter,
            node: 4,
        }],
        context: Bytes::new(),
    };
    let snapshot = SnapshotMeta {
        index: 10,
        term: 2,
        conf: ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        },
    };
    let state = RestoreState {
        hard_state: HardState {
            term: 3,
            vote: 1,
            commit: 10,
        },
        snapshot: Some(snapshot),
        entries: vec![Entry {
            term: 3,
            index: 11,
            kind: EntryKind::ConfChange,
            data: joint.encode(),
        }],
        applied: 10,
    };
    let node = RaftNode::restore(quiet_config(), state.clone()).expect("valid");
    let conf = node.conf_state();
    assert_eq!(conf.voters, vec![1, 2, 3, 4]);
    assert_eq!(conf.voters_outgoing, vec![1, 2, 3]);
    let status = node.status();
    assert_eq!(
        (status.term, status.vote, status.commit, status.first_index),
        (3, 1, 10, 11)
    );
    let mut gap = state.clone();
    gap.entries[0].index = 12;
    assert!(matches!(
        RaftNode::restore(quiet_config(), gap),
        Err(RestoreError::NotContiguous { .. })
    ));
    // A commit index beyond the durable log is a hint and is cut back; a lost hard state
    // behind a durable entry of a later term yields that term and no vote in it.
    let mut torn = state;
    torn.hard_state = HardState {
        term: 2,
        vote: 1,
        commit: 12,
    };
    let node = RaftNode::restore(quiet_config(), torn).expect("valid");
    let status = node.status();
    assert_eq!(
        (status.term, status.vote, status.commit),
        (3, UNKNOWN_VOTE, 11)
    );
}

#[test]
fn a_conflicting_suffix_that_carried_a_configuration_change_reverts_it() {
    let add_four = ConfChange {
        transition: ConfChangeTransition::Auto,
        changes: vec![ConfChangeSingle {
            kind: ConfChangeKind::AddVoter,
            node: 4,
        }],
        context: Bytes::new(),
    };
    let mut node = follower_with_log(2, &[1]);
    let append = |term, entries| {
        message(
            1,
            2,
            term,
            MessageBody::Append {
                prev_log_index: 2,
                prev_log_term: 1,
                entries,
                commit: 1,
            },
        )
    };
    let change = Entry {
        term: 2,
        index: 3,
        kind: EntryKind::ConfChange,
        data: add_four.encode(),
    };
    node.step(append(2, vec![change])).expect("valid");
    assert_eq!(
        node.conf_state().voters,
        vec![1, 2, 3, 4],
        "in effect once appended"
    );
    node.step(append(3, vec![entry(3, 3, "other")]))
        .expect("valid");
    assert_eq!(
        node.conf_state().voters,
        vec![1, 2, 3],
        "reverted with the suffix"
    );
}

/// Thesis §6.4: a leader cut off from the quorum cannot confirm a read; with the test-only
/// defect it answers anyway (a stale read once another leader is elected).
#[test]
fn section_6_4_a_partitioned_leader_cannot_confirm_a_read() {
    for defect in [false, true] {
        if defect && !cfg!(feature = "defects") {
            continue;
        }
        let template = Config {
            #[cfg(feature = "defects")]
            defect: if defect {
                Defect::ReadWithoutQuorum
            } else {
                Defect::None
            },
            ..quiet_config()
        };
        let mut cluster = elected(template);
        cluster.propose(1, "x").expect("leader");
        cluster.stabilize();
        cluster.partition(&[vec![1], vec![2, 3]]);
        cluster.node(1).read_index(7).expect("leader accepts reads");
        cluster.stabilize();
        let answered = !cluster.members[&1].read_states.is_empty();
        assert_eq!(answered, defect, "defect {defect}: answered {answered}");
    }
}

/// Raft §5.2 with asynchronous persistence: a candidate may not lead a term whose (term, vote)
/// is not yet durable on its own disk, even when the other voters already form a quorum. A
/// crash would otherwise bring it back in the previous term, let it win the same term again and
/// append different entries under one (index, term) (simulator seed 4593, 5 nodes).
#[test]
fn section_5_2_a_candidate_leads_only_once_its_own_vote_is_durable() {
    let mut node = follower_with_log(1, &[]);
    let first = node.ready();
    node.on_persisted(first.number);
    node.campaign();
    let ready = node.ready();
    let term = node.status().term;
    assert_eq!(node.status().role, Role::Candidate);
    for voter in [2, 3] {
        let grant = message(voter, 1, term, MessageBody::VoteResponse { reject: false });
        node.step(grant).expect("a vote response is valid input");
    }
    assert_eq!(
        node.status().role,
        Role::Candidate,
        "a quorum of other voters must not make a leader before its own vote is durable"
    );
    node.on_persisted(ready.number);
    assert_eq!(node.status().role, Role::Leader);
}
