//! Transactions, following etcd 3.4's `applierV3backend.Txn`:
//!
//! 1. every compare on the path is evaluated against the state before the
//!    Txn, nested Txns' compares included (etcd `compareToPath`);
//! 2. every operation on that path is checked against the same state (lease
//!    exists, `ignore_*` keys exist, read revisions not future/compacted), so
//!    a refused Txn changes nothing;
//! 3. the operations run in order; later ones see earlier writes, and all
//!    writes share one revision with increasing sub-revisions.

use ballot_proto::etcdserverpb::{
    Compare, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op::Request,
    response_op::Response,
};
use ballot_proto::mvccpb::{Event, KeyValue};

use crate::error::MvccError;
use crate::keys::KeyRange;
use crate::store::{ApplyOutcome, Store, WriteBatch, header};
use crate::validate;

impl Store {
    /// Serves a Txn that cannot write (see [`crate::is_txn_read_only`])
    /// without replicating it, at the current state.
    pub fn txn_read(&self, req: &TxnRequest) -> Result<TxnResponse, MvccError> {
        validate::check_txn_shape(req)?;
        if !validate::is_txn_read_only(req) {
            return Err(MvccError::TxnNotReadOnly);
        }
        let path = self.compare_path(req);
        self.check_path(req, &path, &mut 0)?;
        let mut response = self.read_only_txn(req, &path, &mut 0);
        response.header = header(self.current_revision);
        Ok(response)
    }

    pub(crate) fn apply_txn(
        &mut self,
        req: &TxnRequest,
    ) -> Result<(ApplyOutcome, Vec<Event>), MvccError> {
        validate::check_txn_shape(req)?;
        let path = self.compare_path(req);
        self.check_path(req, &path, &mut 0)?;
        let mut batch = self.begin_write();
        let mut response = self.write_txn(&mut batch, req, &path, &mut 0);
        self.end_write(&batch);
        response.header = header(self.current_revision);
        Ok((ApplyOutcome::Txn(response), batch.events))
    }

    /// The branch taken by this Txn and by every nested Txn on the way, in
    /// depth-first order, all decided against the state before the Txn.
    fn compare_path(&self, req: &TxnRequest) -> Vec<bool> {
        let mut path = Vec::new();
        self.extend_path(req, &mut path);
        path
    }

    fn extend_path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let succeeded = req
            .compare
            .iter()
            .all(|compare| self.compare_holds(compare));
        path.push(succeeded);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.extend_path(nested, path);
            }
        }
    }

    /// etcd `applyCompare`: every key in the compare's range must satisfy
    /// it; with no key, the zero pair is compared, except that a VALUE
    /// compare on a missing key is false.
    fn compare_holds(&self, compare: &Compare) -> bool {
        let range = KeyRange::new(&compare.key, &compare.range_end);
        let mut any = false;
        let mut all = true;
        self.keys.visit(&range, |key, history| {
            if let Some(version) = history.visible(None) {
                any = true;
                all = compare_kv(compare, &version.key_value(key));
            }
            all
        });
        if any {
            return all;
        }
        if compare.target == CompareTarget::Value as i32 {
            return false;
        }
        compare_kv(compare, &KeyValue::default())
    }

    /// etcd's `checkRequests` with `checkPut` and `checkRange` over the
    /// chosen path.
    fn check_path(
        &self,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<(), MvccError> {
        let ops = if path_step(path, cursor) {
            &req.success
        } else {
            &req.failure
        };
        for op in ops {
            match &op.request {
                Some(Request::RequestPut(put)) => self.check_put_state(put)?,
                Some(Request::RequestRange(range)) => {
                    self.read_revision(range.revision)?;
                }
                Some(Request::RequestTxn(nested)) => self.check_path(nested, path, cursor)?,
                Some(Request::RequestDeleteRange(_)) | None => {}
            }
        }
        Ok(())
    }

    fn read_only_txn(&self, req: &TxnRequest, path: &[bool], cursor: &mut usize) -> TxnResponse {
        let succeeded = path_step(path, cursor);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    Response::ResponseRange(self.checked_range(range, self.current_revision))
                }
                Some(Request::RequestTxn(nested)) => {
                    Response::ResponseTxn(self.read_only_txn(nested, path, cursor))
                }
                other => panic!("read-only Txn was checked to hold no writes, found {other:?}"),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        nested_txn_response(succeeded, responses)
    }

    fn write_txn(
        &mut self,
        batch: &mut WriteBatch,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> TxnResponse {
        let succeeded = path_step(path, cursor);
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(Request::RequestRange(range)) => {
                    let view = self.txn_view_revision(batch);
                    Response::ResponseRange(self.checked_range(range, view))
                }
                Some(Request::RequestPut(put)) => {
                    let prev_kv = self.put(batch, put);
                    Response::ResponsePut(ballot_proto::etcdserverpb::PutResponse {
                        header: header(batch.main),
                        prev_kv,
                    })
                }
                Some(Request::RequestDeleteRange(delete)) => {
                    let mut response = self.delete_range(batch, delete);
                    response.header = header(self.txn_view_revision(batch));
                    Response::ResponseDeleteRange(response)
                }
                Some(Request::RequestTxn(nested)) => {
                    Response::ResponseTxn(self.write_txn(batch, nested, path, cursor))
                }
                None => panic!("Txn operations were checked to be non-empty"),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        nested_txn_response(succeeded, responses)
    }

    /// The revision a Txn's own reads report: one ahead once it has written.
    fn txn_view_revision(&self, batch: &WriteBatch) -> i64 {
        if batch.changed() {
            batch.main
        } else {
            self.current_revision
        }
    }

    fn checked_range(
        &self,
        req: &ballot_proto::etcdserverpb::RangeRequest,
        header_revision: i64,
    ) -> ballot_proto::etcdserverpb::RangeResponse {
        match self.range_at(req, header_revision) {
            Ok(response) => response,
            Err(error) => panic!("Txn range was checked before running, yet failed: {error}"),
        }
    }
}

fn path_step(path: &[bool], cursor: &mut usize) -> bool {
    let Some(&succeeded) = path.get(*cursor) else {
        panic!(
            "Txn path has {} decisions, the walk asked for number {}",
            path.len(),
            *cursor + 1
        );
    };
    *cursor += 1;
    succeeded
}

/// A Txn response as etcd builds it for nested Txns: a header with revision
/// 0 (only the outermost header gets the revision).
fn nested_txn_response(succeeded: bool, responses: Vec<ResponseOp>) -> TxnResponse {
    TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded,
        responses,
    }
}

/// etcd `compareKV`. A target union that does not match the target
/// compares against 0 (or the empty value); an unknown result is true.
fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let wanted: &[u8] = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value,
                _ => &[],
            };
            kv.value.as_ref().cmp(wanted)
        }
        Ok(CompareTarget::Version) => kv.version.cmp(&union_int(compare, |u| match u {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&union_int(compare, |u| match u {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&union_int(compare, |u| match u {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&union_int(compare, |u| match u {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        Err(_) => true,
    }
}

fn union_int(compare: &Compare, pick: impl Fn(&TargetUnion) -> Option<i64>) -> i64 {
    compare.target_union.as_ref().and_then(pick).unwrap_or(0)
}
