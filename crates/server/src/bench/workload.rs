//! What each bench request is: keys, the value, and the operation mix.

use bytes::Bytes;

use ballot_proto::etcdserverpb::{
    Compare, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest,
    TxnResponse, compare, request_op,
};

use super::grpc::{GrpcConnection, KvMethod};
use super::{BenchArgs, BenchError, Consistency, Workload};

/// Largest key table built: keys are precomputed so that a request only bumps a reference count.
pub const KEY_TABLE_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Every key of the key space, as slices of one buffer. Key `i` is `i` in zero-padded decimal,
/// `key_size` bytes long, so keys sort in numeric order, as etcdctl prints them.
#[derive(Debug, Clone)]
pub struct KeyTable {
    buffer: Bytes,
    key_size: usize,
    key_count: u64,
}

impl KeyTable {
    pub fn new(key_size: usize, key_count: u64) -> Result<KeyTable, BenchError> {
        let digits = decimal_digits(key_count.saturating_sub(1));
        if key_size < digits {
            return Err(BenchError::KeySizeTooSmall {
                key_size,
                key_space: key_count,
                digits,
            });
        }
        let too_large = || BenchError::KeyTableTooLarge {
            key_space: key_count,
            key_size,
            limit_bytes: KEY_TABLE_BYTES_MAX,
        };
        let total_bytes = usize::try_from(key_count)
            .ok()
            .and_then(|count| count.checked_mul(key_size))
            .filter(|bytes| *bytes <= KEY_TABLE_BYTES_MAX)
            .ok_or_else(too_large)?;
        let mut buffer = Vec::with_capacity(total_bytes);
        for index in 0..key_count {
            buffer.extend(std::iter::repeat_n(b'0', key_size - decimal_digits(index)));
            buffer.extend_from_slice(index.to_string().as_bytes());
        }
        Ok(KeyTable {
            buffer: Bytes::from(buffer),
            key_size,
            key_count,
        })
    }

    pub fn key_count(&self) -> u64 {
        self.key_count
    }

    /// Key number `index` (taken modulo the key count).
    pub fn key(&self, index: u64) -> Bytes {
        let index = (index % self.key_count) as usize;
        let start = index * self.key_size;
        self.buffer.slice(start..start + self.key_size)
    }
}

fn decimal_digits(mut value: u64) -> usize {
    let mut digits = 1;
    while value >= 10 {
        value /= 10;
        digits += 1;
    }
    digits
}

/// SplitMix64: a tiny, fast generator. The bench needs uniform key choices, not cryptographic
/// quality, and must not spend the CPU it is measuring on random numbers.
#[derive(Debug, Clone)]
pub struct FastRng {
    state: u64,
}

impl FastRng {
    pub fn new(seed: u64) -> FastRng {
        FastRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Range,
    Txn,
}

/// Everything a client needs to build its requests; cheap to clone (reference counts only).
#[derive(Debug, Clone)]
pub struct RequestFactory {
    keys: KeyTable,
    value: Bytes,
    workload: Workload,
    serializable: bool,
    read_ratio: f64,
}

impl RequestFactory {
    pub fn new(args: &BenchArgs) -> Result<RequestFactory, BenchError> {
        Ok(RequestFactory {
            keys: KeyTable::new(args.key_size, args.key_space)?,
            // The value's content does not matter to a key-value store; a run of one byte
            // compresses nothing since etcd does not compress.
            value: Bytes::from(vec![b'v'; args.val_size]),
            workload: args.workload,
            serializable: args.consistency == Consistency::S,
            read_ratio: args.read_ratio,
        })
    }

    /// Picks the next operation for the workload.
    pub fn choose(&self, rng: &mut FastRng) -> OpKind {
        match self.workload {
            Workload::Put => OpKind::Put,
            Workload::Range => OpKind::Range,
            Workload::Txn => OpKind::Txn,
            Workload::Mixed if rng.next_unit() < self.read_ratio => OpKind::Range,
            Workload::Mixed => OpKind::Put,
        }
    }

    pub fn put(&self, key: Bytes) -> PutRequest {
        PutRequest {
            key,
            value: self.value.clone(),
            ..PutRequest::default()
        }
    }

    pub fn range(&self, key: Bytes) -> RangeRequest {
        RangeRequest {
            key,
            serializable: self.serializable,
            ..RangeRequest::default()
        }
    }

    /// A Txn with one compare that always holds (`mod_revision < i64::MAX`, true for present
    /// and missing keys alike) and a put in the success branch: it measures the cost of the
    /// Txn path and compare evaluation over a plain put.
    pub fn txn(&self, key: Bytes) -> TxnRequest {
        let compare = Compare {
            result: compare::CompareResult::Less as i32,
            target: compare::CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Bytes::new(),
            target_union: Some(compare::TargetUnion::ModRevision(i64::MAX)),
        };
        TxnRequest {
            compare: vec![compare],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(self.put(key))),
            }],
            failure: Vec::new(),
        }
    }

    /// Builds and sends one request of `kind` on `kv`; returns the gRPC status on failure.
    pub async fn execute(
        &self,
        kv: &mut GrpcConnection,
        kind: OpKind,
        rng: &mut FastRng,
    ) -> Result<(), tonic::Status> {
        let key = self.keys.key(rng.next_u64());
        match kind {
            OpKind::Put => kv
                .unary::<_, PutResponse>(KvMethod::Put, &self.put(key))
                .await
                .map(drop),
            OpKind::Range => kv
                .unary::<_, RangeResponse>(KvMethod::Range, &self.range(key))
                .await
                .map(drop),
            OpKind::Txn => kv
                .unary::<_, TxnResponse>(KvMethod::Txn, &self.txn(key))
                .await
                .map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_zero_padded_numbers_of_the_requested_size() {
        let table = KeyTable::new(6, 1000).expect("valid");
        assert_eq!(&table.key(0)[..], b"000000");
        assert_eq!(&table.key(42)[..], b"000042");
        assert_eq!(&table.key(999)[..], b"000999");
        assert_eq!(
            &table.key(1000)[..],
            b"000000",
            "indices wrap around the key space"
        );
    }

    #[test]
    fn key_size_must_hold_the_largest_key_number() {
        assert!(KeyTable::new(3, 1000).is_ok(), "999 fits in three digits");
        assert!(matches!(
            KeyTable::new(3, 1001),
            Err(BenchError::KeySizeTooSmall { digits: 4, .. })
        ));
        assert!(matches!(
            KeyTable::new(1024, 1 << 20),
            Err(BenchError::KeyTableTooLarge { .. })
        ));
    }

    #[test]
    fn rng_is_deterministic_and_covers_the_unit_interval() {
        let mut a = FastRng::new(7);
        let mut b = FastRng::new(7);
        let draws: Vec<f64> = (0..10_000).map(|_| a.next_unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let below_half = draws.iter().filter(|x| **x < 0.5).count();
        assert!((4_500..5_500).contains(&below_half), "got {below_half}");
        let mut a2 = FastRng::new(7);
        assert_eq!(a2.next_u64(), b.next_u64());
    }

    #[test]
    fn txn_compare_always_holds_and_puts_in_success() {
        let args = test_args(Workload::Txn);
        let factory = RequestFactory::new(&args).expect("valid");
        let txn = factory.txn(Bytes::from_static(b"k"));
        assert_eq!(txn.compare.len(), 1);
        assert_eq!(
            txn.compare[0].target_union,
            Some(compare::TargetUnion::ModRevision(i64::MAX))
        );
        assert!(matches!(
            &txn.success[0].request,
            Some(request_op::Request::RequestPut(put)) if put.value.len() == 256
        ));
    }

    #[test]
    fn mixed_workload_follows_the_read_ratio() {
        let mut args = test_args(Workload::Mixed);
        args.read_ratio = 0.25;
        let factory = RequestFactory::new(&args).expect("valid");
        let mut rng = FastRng::new(1);
        let reads = (0..10_000)
            .filter(|_| factory.choose(&mut rng) == OpKind::Range)
            .count();
        assert!((2_200..2_800).contains(&reads), "got {reads}");
    }

    fn test_args(workload: Workload) -> BenchArgs {
        BenchArgs {
            workload,
            endpoints: "127.0.0.1:2379".into(),
            cacert: None,
            cert: None,
            key: None,
            conns: 1,
            clients: 1,
            key_size: 8,
            val_size: 256,
            key_space: 1000,
            duration: None,
            total: Some(1),
            rate: 0,
            consistency: Consistency::L,
            read_ratio: 0.9,
            json: false,
        }
    }
}
