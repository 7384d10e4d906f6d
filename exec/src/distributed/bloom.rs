//! Bloom filters of a hash join's build-side keys, so that its dynamic
//! filter reaches scans in other stages also when its build side has too
//! many keys for a list.
//!
//! DataFusion writes a join's key set into its dynamic filter as an IN list
//! only up to a few keys ([`super::filters::SENT_KEYS_MAX`]); past that, as a
//! reference to the join's hash table, which cannot leave the node (it is
//! serialized as `true`). Here the keys of a build side that sends its
//! filter are hashed as they pass ([`BloomBuildExec`]); when the filter is
//! sent, each hash table reference in it is replaced by a split block Bloom
//! filter of those hashes ([`BloomFilterExpr`]): the probe-side scans then
//! drop most rows whose keys the build side lacks. Each task's filter takes
//! about 10 bits for each key of the whole build side (it is sized for all
//! tasks' keys, so that where it is used the tasks' filters OR into one).
//!
//! The filter is Parquet's split block Bloom filter (`Sbbf`, the [Parquet
//! format's bloom filter
//! specification](https://github.com/apache/parquet-format/blob/master/BloomFilter.md);
//! Putze, Sanders, Singler, "Cache-, hash- and space-efficient Bloom
//! filters", 2007): one 32-byte block per key, so a test costs one cache
//! line. Keys are hashed to 64 bits by DataFusion's hashing with a fixed
//! seed (so every node hashes alike); the filter holds those hashes.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::hash_utils::{RandomState, create_hashes};
use datafusion::common::tree_node::{TreeNodeIterator, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::logical_expr::ColumnarValue;
use datafusion::parquet::bloom_filter::Sbbf;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// The share of keys absent from the build side that a Bloom filter lets
/// through (its false positive probability). At 1% it takes about 10 bits
/// a key (Parquet's sizing rounds up to a power of two bytes).
pub const FALSE_POSITIVES: f64 = 0.01;

/// Build-side rows a task hashes at most (8 bytes each, counted against the
/// query's memory). Past that, or when the query's memory is short, the
/// task sends no Bloom filter: its filter's membership test is `true` and
/// only the bounds travel, as before.
pub const BUILD_ROWS_MAX: usize = 8 << 20;

/// The seed every node hashes keys with, so that a filter built on one node
/// tests keys on another.
const SEED: RandomState = RandomState::with_seed(0x5155_4152_5259_424c);

/// The 64-bit hashes of `keys` evaluated on `batch`, one a row.
fn hashes_of(keys: &[Arc<dyn PhysicalExpr>], batch: &RecordBatch) -> DfResult<Vec<u64>> {
    let rows = batch.num_rows();
    let arrays = keys
        .iter()
        .map(|key| key.evaluate(batch)?.into_array(rows))
        .collect::<DfResult<Vec<ArrayRef>>>()?;
    let mut hashes = vec![0; rows];
    create_hashes(&arrays, &SEED, &mut hashes)?;
    Ok(hashes)
}

/// The hashes of a build side's keys, recorded as its batches pass, until
/// there are too many or the query's memory is short.
#[derive(Debug)]
pub struct BuildKeys {
    state: Mutex<Recording>,
    /// How many tasks build a part of the filter: each sizes its Bloom
    /// filter for as many times its keys, so that the union of all parts
    /// ([`merged`]) still lets through about [`FALSE_POSITIVES`] of the
    /// keys none has.
    builders: u32,
}

#[derive(Debug, Default)]
enum Recording {
    #[default]
    Idle,
    Hashes(Vec<u64>, MemoryReservation),
    /// Too many rows or too little memory: no Bloom filter.
    GaveUp,
}

impl BuildKeys {
    /// Records nothing yet, for a filter `builders` tasks build a part of.
    pub fn new(builders: u32) -> Self {
        Self {
            state: Mutex::default(),
            builders,
        }
    }

    /// Records the hashes of `keys` in `batch`, whose memory is counted in
    /// `ctx`'s pool. The hashing is done outside the lock, so the build
    /// side's partitions record side by side.
    pub(crate) fn record(
        &self,
        keys: &[Arc<dyn PhysicalExpr>],
        batch: &RecordBatch,
        ctx: &TaskContext,
    ) -> DfResult<()> {
        if matches!(*self.lock(), Recording::GaveUp) {
            return Ok(());
        }
        let batch_hashes = hashes_of(keys, batch)?;
        let mut state = self.lock();
        if matches!(*state, Recording::Idle) {
            let reservation = MemoryConsumer::new("BloomBuildExec").register(ctx.memory_pool());
            *state = Recording::Hashes(Vec::new(), reservation);
        }
        let Recording::Hashes(hashes, reservation) = &mut *state else {
            return Ok(());
        };
        let rows = batch_hashes.len();
        if hashes.len() + rows > BUILD_ROWS_MAX
            || reservation.try_grow(rows * size_of::<u64>()).is_err()
        {
            *state = Recording::GaveUp;
            return Ok(());
        }
        hashes.extend(batch_hashes);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Bloom filter of the hashes recorded, sized for as many distinct
    /// keys as rows (times the building tasks); `None` if the recording gave
    /// up. The hashes are freed.
    pub fn bloom(&self) -> Option<Arc<Sbbf>> {
        let hashes = match std::mem::replace(&mut *self.lock(), Recording::GaveUp) {
            Recording::Idle => Vec::new(),
            Recording::Hashes(hashes, _reservation) => hashes,
            Recording::GaveUp => return None,
        };
        let keys = hashes.len().max(1) as u64 * u64::from(self.builders.max(1));
        let mut bloom = Sbbf::new_with_ndv_fpp(keys, FALSE_POSITIVES).ok()?;
        for hash in &hashes {
            bloom.insert(hash);
        }
        Some(Arc::new(bloom))
    }
}

/// Passes its input through, recording the hashes of its join keys: the
/// build side of a hash join whose dynamic filter is sent to other stages.
#[derive(Debug)]
pub struct BloomBuildExec {
    input: Arc<dyn ExecutionPlan>,
    /// The join's build-side key expressions.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    seen: Arc<BuildKeys>,
}

impl BloomBuildExec {
    /// `input`, recording the hashes of `keys` into `seen`.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        keys: Vec<Arc<dyn PhysicalExpr>>,
        seen: Arc<BuildKeys>,
    ) -> Self {
        Self { input, keys, seen }
    }

    /// Where the hashes go.
    pub fn seen(&self) -> &Arc<BuildKeys> {
        &self.seen
    }
}

impl DisplayAs for BloomBuildExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(ToString::to_string).collect();
        write!(f, "BloomBuildExec: keys=[{}]", keys.join(", "))
    }
}

impl ExecutionPlan for BloomBuildExec {
    fn name(&self) -> &'static str {
        "BloomBuildExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.keys.iter().apply_until_stop(f)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(
                input,
                self.keys.clone(),
                self.seen.clone(),
            ))),
            _ => Err(DataFusionError::Internal(
                "BloomBuildExec has one input".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let schema = input.schema();
        let (keys, seen) = (self.keys.clone(), self.seen.clone());
        let recorded = input.map(move |batch| {
            let batch = batch?;
            seen.record(&keys, &batch, &context)?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, recorded)))
    }
}

/// `filters` with those of one size made one: the union of two split block
/// Bloom filters with as many blocks is the OR of their bit sets (each hash
/// sets and tests bits in the block its value picks), so a row is tested
/// against one filter a size instead of one a building task.
///
/// # Errors
/// Parquet's, if a bit set cannot be written out (into memory).
pub fn merged(filters: &[Arc<Sbbf>]) -> DfResult<Vec<Arc<Sbbf>>> {
    let mut by_size: BTreeMap<usize, Vec<&Arc<Sbbf>>> = BTreeMap::new();
    for filter in filters {
        by_size.entry(filter.num_blocks()).or_default().push(filter);
    }
    let bits = |filter: &Sbbf| -> DfResult<Vec<u8>> {
        let mut bits = Vec::with_capacity(filter.num_blocks() * 32);
        filter.write_bitset(&mut bits)?;
        Ok(bits)
    };
    by_size
        .into_values()
        .map(|group| match group.as_slice() {
            [one] => Ok(Arc::clone(one)),
            _ => {
                let mut union = vec![0u8; group[0].num_blocks() * 32];
                for filter in group {
                    for (to, from) in union.iter_mut().zip(bits(filter)?) {
                        *to |= from;
                    }
                }
                Ok(Arc::new(Sbbf::new(&union)))
            }
        })
        .collect()
}

/// Whether the hash of a row's keys is in any of the Bloom filters: `false`
/// means no build side has the row's keys; `true`, that one may.
#[derive(Debug, Clone)]
pub struct BloomFilterExpr {
    keys: Vec<Arc<dyn PhysicalExpr>>,
    filters: Vec<Arc<Sbbf>>,
}

impl BloomFilterExpr {
    /// Tests `keys` (the probe side's join keys, in the build side's order)
    /// against `filters`.
    pub fn new(keys: Vec<Arc<dyn PhysicalExpr>>, filters: Vec<Arc<Sbbf>>) -> Self {
        Self { keys, filters }
    }

    /// The probe-side keys tested.
    pub fn keys(&self) -> &[Arc<dyn PhysicalExpr>] {
        &self.keys
    }

    /// The filters tested against.
    pub fn filters(&self) -> &[Arc<Sbbf>] {
        &self.filters
    }

    /// Bytes of the filters' bit sets.
    pub fn bytes(&self) -> usize {
        self.filters.iter().map(|f| f.num_blocks() * 32).sum()
    }
}

impl fmt::Display for BloomFilterExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(ToString::to_string).collect();
        write!(
            f,
            "bloom_filter([{}], {} filters, {} bytes)",
            keys.join(", "),
            self.filters.len(),
            self.bytes()
        )
    }
}

impl PartialEq for BloomFilterExpr {
    fn eq(&self, other: &Self) -> bool {
        // Filters are compared by identity, as DataFusion compares a
        // join's hash tables: comparing bit sets would cost a pass over each.
        self.keys == other.keys
            && self.filters.len() == other.filters.len()
            && self
                .filters
                .iter()
                .zip(&other.filters)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

impl Eq for BloomFilterExpr {}

impl Hash for BloomFilterExpr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.keys.hash(state);
        for filter in &self.filters {
            Arc::as_ptr(filter).hash(state);
        }
    }
}

impl PhysicalExpr for BloomFilterExpr {
    fn data_type(&self, _input_schema: &Schema) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, _input_schema: &Schema) -> DfResult<bool> {
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> DfResult<ColumnarValue> {
        let hashes = hashes_of(&self.keys, batch)?;
        let passes = BooleanBuffer::collect_bool(hashes.len(), |row| {
            self.filters.iter().any(|filter| filter.check(&hashes[row]))
        });
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            passes, None,
        ))))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.keys.iter().collect()
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Self::new(children, self.filters.clone())))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A [`BloomFilterExpr`] as datafusion-proto's extension codec carries it
/// (its keys travel as the extension's inputs).
#[derive(Serialize, Deserialize)]
struct EncodedBloom {
    /// Each filter's bit set, as Parquet writes it.
    filters: Vec<Bytes>,
}

/// Encodes `expr` if it is a [`BloomFilterExpr`].
///
/// # Errors
/// `NotImplemented` for any other expression.
pub fn encode(expr: &Arc<dyn PhysicalExpr>, buf: &mut Vec<u8>) -> DfResult<()> {
    let Some(bloom) = expr.downcast_ref::<BloomFilterExpr>() else {
        return Err(DataFusionError::NotImplemented(format!(
            "{expr} cannot be sent to another node"
        )));
    };
    let filters = bloom
        .filters
        .iter()
        .map(|filter| {
            let mut bits = Vec::with_capacity(filter.num_blocks() * 32);
            filter.write_bitset(&mut bits)?;
            Ok(Bytes::from(bits))
        })
        .collect::<DfResult<Vec<_>>>()?;
    let bytes = postcard::to_allocvec(&EncodedBloom { filters })
        .map_err(|e| DataFusionError::Internal(format!("cannot encode a Bloom filter: {e}")))?;
    buf.extend_from_slice(&bytes);
    Ok(())
}

/// The [`BloomFilterExpr`] encoded in `buf`, testing `inputs`.
///
/// # Errors
/// If `buf` is not an encoded Bloom filter.
pub fn decode(buf: &[u8], inputs: &[Arc<dyn PhysicalExpr>]) -> DfResult<Arc<dyn PhysicalExpr>> {
    let encoded: EncodedBloom = postcard::from_bytes(buf)
        .map_err(|e| DataFusionError::Internal(format!("bad Bloom filter: {e}")))?;
    let filters = encoded
        .filters
        .iter()
        .map(|bits| {
            if bits.is_empty() || bits.len() % 32 != 0 {
                return Err(DataFusionError::Internal(format!(
                    "bad Bloom filter: {} bytes, not a whole number of 32-byte blocks",
                    bits.len()
                )));
            }
            Ok(Arc::new(Sbbf::new(bits)))
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(Arc::new(BloomFilterExpr::new(inputs.to_vec(), filters)))
}

/// Extension codec for the expressions of dynamic filters sent between
/// nodes: DataFusion's, and [`BloomFilterExpr`].
#[derive(Debug, Default)]
pub struct FilterCodec;

impl datafusion_proto::physical_plan::PhysicalExtensionCodec for FilterCodec {
    fn try_decode(
        &self,
        _buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn datafusion_proto::physical_plan::PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Err(DataFusionError::NotImplemented(
            "a dynamic filter holds no plan".into(),
        ))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        _buf: &mut Vec<u8>,
        _proto_converter: &dyn datafusion_proto::physical_plan::PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        Err(DataFusionError::NotImplemented(format!(
            "a dynamic filter holds no plan ({})",
            node.name()
        )))
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        _ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        decode(buf, inputs)
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        _ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> DfResult<()> {
        encode(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::Field;
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_expr::expressions::col;
    use datafusion::prelude::SessionContext;
    use datafusion_datasource::memory::MemorySourceConfig;
    use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
    use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
    use datafusion_proto::protobuf::PhysicalExprNode;
    use prost::Message;

    fn schema() -> Arc<Schema> {
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]))
    }

    fn batch(keys: impl IntoIterator<Item = i64>) -> RecordBatch {
        let keys: Int64Array = keys.into_iter().collect();
        RecordBatch::try_new(schema(), vec![Arc::new(keys)]).expect("batch")
    }

    /// Runs a build side of keys `0, 3, 6, …` (10,000 of them, in two
    /// partitions) through a [`BloomBuildExec`] in `ctx`; its Bloom filter.
    async fn built(ctx: Arc<TaskContext>) -> Option<Arc<Sbbf>> {
        let partitions = [
            vec![batch((0..5_000).map(|i| i * 3))],
            vec![batch((5_000..10_000).map(|i| i * 3))],
        ];
        let input = MemorySourceConfig::try_new_exec(&partitions, schema(), None).expect("input");
        let key = col("k", &schema()).expect("column");
        let build = BloomBuildExec::new(input, vec![key], Arc::new(BuildKeys::new(1)));
        for partition in 0..2 {
            let mut stream = build.execute(partition, ctx.clone()).expect("execute");
            while let Some(batch) = stream.next().await {
                batch.expect("batch");
            }
        }
        build.seen().bloom()
    }

    fn passing(filter: &Arc<dyn PhysicalExpr>, keys: impl IntoIterator<Item = i64>) -> usize {
        let batch = batch(keys);
        let passed = filter
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .expect("evaluate");
        passed
            .as_any()
            .downcast_ref::<BooleanArray>()
            .expect("booleans")
            .true_count()
    }

    #[tokio::test]
    async fn every_built_key_passes_and_about_one_in_a_hundred_others() {
        let bloom = built(SessionContext::new().task_ctx())
            .await
            .expect("a filter");
        let key = col("k", &schema()).expect("column");
        let filter: Arc<dyn PhysicalExpr> = Arc::new(BloomFilterExpr::new(vec![key], vec![bloom]));
        assert_eq!(passing(&filter, (0..10_000).map(|i| i * 3)), 10_000);
        // 20,000 keys the build side lacks.
        let others = passing(&filter, (0..10_000).flat_map(|i| [i * 3 + 1, i * 3 + 2]));
        assert!(others < 600, "{others} of 20,000 absent keys pass");
    }

    #[test]
    fn filters_of_one_size_are_tested_as_one() {
        let ctx = SessionContext::new().task_ctx();
        let key = col("k", &schema()).expect("column");
        // Two tasks build the filter.
        let bloom_of = |keys: std::ops::Range<i64>| {
            let seen = BuildKeys::new(2);
            seen.record(std::slice::from_ref(&key), &batch(keys), &ctx)
                .expect("record");
            seen.bloom().expect("a filter")
        };
        let (first, second, small) = (
            bloom_of(0..5_000),
            bloom_of(5_000..10_000),
            bloom_of(20_000..20_100),
        );
        assert_eq!(first.num_blocks(), second.num_blocks());
        assert_ne!(first.num_blocks(), small.num_blocks());
        let merged = merged(&[first, small, second]).expect("merged");
        assert_eq!(merged.len(), 2, "one filter a size");
        let filter: Arc<dyn PhysicalExpr> = Arc::new(BloomFilterExpr::new(vec![key], merged));
        assert_eq!(passing(&filter, 0..10_000), 10_000);
        assert_eq!(passing(&filter, 20_000..20_100), 100);
        let others = passing(&filter, 10_000..20_000);
        assert!(others < 300, "{others} of 10,000 absent keys pass");
    }

    #[tokio::test]
    async fn a_build_side_over_the_query_memory_sends_no_filter() {
        // 10,000 hashes take 80,000 bytes.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(50_000)))
            .build_arc()
            .expect("runtime");
        let ctx = Arc::new(TaskContext::default().with_runtime(runtime));
        assert!(built(ctx).await.is_none());
    }

    #[tokio::test]
    async fn a_filter_decodes_on_another_node_as_it_was() {
        let bloom = built(SessionContext::new().task_ctx())
            .await
            .expect("a filter");
        let key = col("k", &schema()).expect("column");
        let filter: Arc<dyn PhysicalExpr> = Arc::new(BloomFilterExpr::new(vec![key], vec![bloom]));
        let bytes = serialize_physical_expr(&filter, &FilterCodec)
            .expect("encode")
            .encode_to_vec();
        let node = PhysicalExprNode::decode(bytes.as_slice()).expect("proto");
        let ctx = SessionContext::new().task_ctx();
        let decoded = parse_physical_expr(&node, &ctx, &schema(), &FilterCodec).expect("decode");
        assert!(decoded.is::<BloomFilterExpr>(), "{decoded}");
        let keys = || -20_000..40_000;
        assert_eq!(passing(&decoded, keys()), passing(&filter, keys()));
        assert!(passing(&decoded, keys()) >= 10_000);
    }
}
