//! Request checks that need no state, as etcd's gRPC layer does them
//! (`etcdserver/api/v3rpc/key.go`: `checkRangeRequest`, `checkPutRequest`,
//! `checkDeleteRequest`, `checkTxnRequest`, `checkIntervals`).
//!
//! The server runs them before proposing, so a bad request costs no log
//! entry; [`crate::Store::apply`] runs them again, so a command that reaches
//! the log unchecked is refused identically on every replica.

use ballot_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest, range_request::SortOrder,
    range_request::SortTarget, request_op::Request,
};
use bytes::Bytes;

use crate::command::Command;
use crate::error::MvccError;

/// etcd `checkRangeRequest`.
pub fn check_range(req: &RangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if SortOrder::try_from(req.sort_order).is_err()
        || SortTarget::try_from(req.sort_target).is_err()
    {
        return Err(MvccError::InvalidSortOption);
    }
    Ok(())
}

/// etcd `checkPutRequest`.
pub fn check_put(req: &PutRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    if req.ignore_value && !req.value.is_empty() {
        return Err(MvccError::ValueProvided);
    }
    if req.ignore_lease && req.lease != 0 {
        return Err(MvccError::LeaseProvided);
    }
    Ok(())
}

/// etcd `checkDeleteRequest`.
pub fn check_delete(req: &DeleteRangeRequest) -> Result<(), MvccError> {
    if req.key.is_empty() {
        return Err(MvccError::EmptyKey);
    }
    Ok(())
}

/// etcd's Txn checks: the operation count limit (`txn_ops_max`, 128 by
/// default, shrinking for nested transactions as etcd's budget does), empty
/// compare keys, every operation's own checks, then the duplicate-key rules
/// of both branches.
pub fn check_txn(req: &TxnRequest, txn_ops_max: usize) -> Result<(), MvccError> {
    check_txn_ops(req, txn_ops_max)?;
    check_intervals(&req.success)?;
    check_intervals(&req.failure)?;
    Ok(())
}

/// [`check_txn`] without the operation count limit: what the store checks
/// when it applies or serves a Txn. The limit is a member's own setting and is
/// checked before proposing; applying the log must not depend on it.
pub fn check_txn_shape(req: &TxnRequest) -> Result<(), MvccError> {
    check_txn(req, usize::MAX)
}

/// Every state-free check of a command, as the server should run it before
/// proposing.
pub fn check_command(command: &Command, txn_ops_max: usize) -> Result<(), MvccError> {
    match command {
        Command::Put(req) => check_put(req),
        Command::DeleteRange(req) => check_delete(req),
        Command::Txn(req) => check_txn(req, txn_ops_max),
        Command::Compact(_)
        | Command::LeaseGrant { .. }
        | Command::LeaseRevoke { .. }
        | Command::LeaseCheckpoint { .. } => Ok(()),
    }
}

/// Whether a Txn cannot write in either branch, at any depth (etcd
/// `isTxnReadonly`); such a Txn may be served by [`crate::Store::txn_read`].
pub fn is_txn_read_only(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(_)) | None => true,
            Some(Request::RequestTxn(nested)) => is_txn_read_only(nested),
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
        })
}

fn check_txn_ops(req: &TxnRequest, txn_ops_max: usize) -> Result<(), MvccError> {
    let ops = req
        .compare
        .len()
        .max(req.success.len())
        .max(req.failure.len());
    if ops > txn_ops_max {
        return Err(MvccError::TooManyOps);
    }
    if req.compare.iter().any(|compare| compare.key.is_empty()) {
        return Err(MvccError::EmptyKey);
    }
    // etcd hands nested transactions the budget left after this level.
    let nested_max = txn_ops_max - ops;
    for op in req.success.iter().chain(&req.failure) {
        check_op(op, nested_max)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, txn_ops_max: usize) -> Result<(), MvccError> {
    match &op.request {
        Some(Request::RequestRange(req)) => check_range(req),
        Some(Request::RequestPut(req)) => check_put(req),
        Some(Request::RequestDeleteRange(req)) => check_delete(req),
        Some(Request::RequestTxn(req)) => check_txn_ops(req, txn_ops_max),
        // etcd answers an empty operation with ErrGRPCKeyNotFound.
        None => Err(MvccError::KeyNotFound),
    }
}

/// A range deleted in a Txn branch, as etcd's interval tree holds it: a
/// single key, or `[start, end)` built from the raw `range_end`.
#[derive(Debug, Clone)]
struct DeletedInterval {
    start: Bytes,
    end: Bytes,
    single: bool,
}

impl DeletedInterval {
    fn contains(&self, key: &[u8]) -> bool {
        if self.single {
            return key == self.start.as_ref();
        }
        // etcd builds `[key, range_end)` from the raw `range_end`, so a
        // delete with `range_end == "\0"` is the interval `[key, "\0")`,
        // which holds no key: etcd does not see it conflict with any put.
        // Mirrored on purpose so Ballot refuses exactly what etcd refuses.
        key >= self.start.as_ref() && key < self.end.as_ref()
    }
}

/// etcd `checkIntervals`: within one branch (including nested
/// transactions), a key may be put at most once and may not be put inside a
/// range deleted at the same or an enclosing level; puts in the `success`
/// and `failure` branches of one nested Txn may repeat each other because
/// only one branch runs. The quirks of etcd's rule (a later nested Txn's
/// delete is not checked against an earlier nested Txn's put) are kept, so
/// Ballot accepts and refuses the same transactions as etcd.
fn check_intervals(ops: &[RequestOp]) -> Result<(Vec<Bytes>, Vec<DeletedInterval>), MvccError> {
    let mut deleted: Vec<DeletedInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(req)) => Some(DeletedInterval {
                start: req.key.clone(),
                end: req.range_end.clone(),
                single: req.range_end.is_empty(),
            }),
            _ => None,
        })
        .collect();
    let mut puts: Vec<Bytes> = Vec::new();
    let conflicts = |key: &[u8], puts: &[Bytes], deleted: &[DeletedInterval]| {
        puts.iter().any(|put| put.as_ref() == key) || deleted.iter().any(|d| d.contains(key))
    };
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deleted_then) = check_intervals(&nested.success)?;
        let (puts_else, deleted_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if conflicts(key, &puts, &deleted) {
                return Err(MvccError::DuplicateKey);
            }
            puts.push(key.clone());
        }
        for key in &puts_else {
            let repeats_then = puts_then.iter().any(|then| then == key);
            let repeats_other = puts.iter().any(|put| put == key) && !repeats_then;
            if repeats_other || deleted.iter().any(|d| d.contains(key)) {
                return Err(MvccError::DuplicateKey);
            }
            if !repeats_then {
                puts.push(key.clone());
            }
        }
        deleted.extend(deleted_then);
        deleted.extend(deleted_else);
    }
    for op in ops {
        let Some(Request::RequestPut(req)) = &op.request else {
            continue;
        };
        if conflicts(&req.key, &puts, &deleted) {
            return Err(MvccError::DuplicateKey);
        }
        puts.push(req.key.clone());
    }
    Ok((puts, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ballot_proto::etcdserverpb::Compare;

    fn put(key: &'static [u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: Bytes::from_static(key),
                ..Default::default()
            })),
        }
    }

    fn delete(key: &'static [u8], end: &'static [u8]) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: Bytes::from_static(key),
                range_end: Bytes::from_static(end),
                prev_kv: false,
            })),
        }
    }

    fn nested(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure: vec![],
        }
    }

    #[test]
    fn duplicate_rules_follow_etcd() {
        let dup = Err(MvccError::DuplicateKey);
        assert_eq!(check_txn(&txn(vec![put(b"a"), put(b"a")]), 128), dup);
        assert_eq!(
            check_txn(&txn(vec![put(b"b"), delete(b"a", b"c")]), 128),
            dup
        );
        assert_eq!(
            check_txn(&txn(vec![delete(b"a", b""), put(b"a")]), 128),
            dup
        );
        assert_eq!(
            check_txn(&txn(vec![delete(b"a", b"c"), delete(b"b", b"d")]), 128),
            Ok(())
        );
        assert_eq!(check_txn(&txn(vec![put(b"a"), put(b"b")]), 128), Ok(()));
        // Puts in both branches of one nested Txn are fine: only one runs.
        assert_eq!(
            check_txn(&txn(vec![nested(vec![put(b"a")], vec![put(b"a")])]), 128),
            Ok(())
        );
        // A nested put against an outer put or delete is a duplicate.
        assert_eq!(
            check_txn(&txn(vec![put(b"a"), nested(vec![put(b"a")], vec![])]), 128),
            dup
        );
        assert_eq!(
            check_txn(
                &txn(vec![nested(vec![delete(b"a", b"b")], vec![]), put(b"a")]),
                128
            ),
            dup
        );
        // etcd quirk kept: "\0" as range_end forms an empty interval here.
        assert_eq!(
            check_txn(&txn(vec![put(b"b"), delete(b"a", b"\0")]), 128),
            Ok(())
        );
    }

    #[test]
    fn operation_limits() {
        let many: Vec<RequestOp> = (0..129).map(|_| delete(b"a", b"")).collect();
        assert_eq!(
            check_txn(&txn(many.clone()), 128),
            Err(MvccError::TooManyOps)
        );
        assert_eq!(check_txn(&txn(many[..128].to_vec()), 128), Ok(()));
        let compares = TxnRequest {
            compare: vec![Compare::default(); 129],
            success: vec![],
            failure: vec![],
        };
        assert_eq!(check_txn(&compares, 128), Err(MvccError::TooManyOps));
        let empty_compare_key = TxnRequest {
            compare: vec![Compare::default()],
            success: vec![],
            failure: vec![],
        };
        assert_eq!(check_txn(&empty_compare_key, 128), Err(MvccError::EmptyKey));
        let empty_op = txn(vec![RequestOp { request: None }]);
        assert_eq!(check_txn(&empty_op, 128), Err(MvccError::KeyNotFound));
    }

    #[test]
    fn read_only_detection() {
        assert!(is_txn_read_only(&txn(vec![])));
        assert!(!is_txn_read_only(&txn(vec![nested(
            vec![],
            vec![put(b"a")]
        )])));
    }
}
