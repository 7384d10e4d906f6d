//! [`ExchangeExec`]: the leaf of a stage that reads another stage's output
//! from the nodes running it, and [`Codec`], which carries it (and nothing
//! else DataFusion cannot serialize itself) in a fragment's plan.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{TreeNodeIterator, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_expr_common::physical_expr::proto_decode::PhysicalExprDecodeCtx;
use datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::{
    RecordBatchReceiverStreamBuilder, RecordBatchStreamAdapter,
};
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf::PhysicalExprNode;
use futures::StreamExt;
use prost::Message;
use quarry_common::catalog::NodeId;
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use super::{
    Cluster, ExchangeRequest, ExchangeResponse, FragmentKey, PREFETCH, QueryId, remote_error,
};

/// One producer task of the stage an exchange reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Producer {
    /// The node running it.
    pub node: NodeId,
    /// Its task index.
    pub task: u32,
    /// Its output partitions (for a shuffle: all consumers' partitions).
    pub partitions: u32,
}

/// What an exchange reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExchangeSpec {
    /// The query.
    pub query: QueryId,
    /// The stage read.
    pub stage: u32,
    /// Shuffle (hash partitions `consumer * partitions ..` of every producer)
    /// or gather (every partition of every producer).
    pub shuffle: bool,
    /// For a shuffle: partitions per consumer task.
    pub partitions: u32,
    /// The task (of the consuming stage) this exchange is part of.
    pub consumer: u32,
    /// The producer tasks (empty while planning).
    pub producers: Vec<Producer>,
}

impl ExchangeSpec {
    /// Output partitions of the exchange.
    pub fn output_partitions(&self) -> usize {
        if self.shuffle {
            self.partitions as usize
        } else {
            self.producers.iter().map(|p| p.partitions as usize).sum()
        }
    }

    /// The (node, fragment, partition) sources of output partition `partition`.
    fn sources(&self, partition: usize) -> Vec<(NodeId, FragmentKey, u32)> {
        let key = |p: &Producer| FragmentKey {
            query: self.query,
            stage: self.stage,
            task: p.task,
        };
        if self.shuffle {
            let hashed = self.consumer * self.partitions + partition as u32;
            return self
                .producers
                .iter()
                .map(|p| (p.node, key(p), hashed))
                .collect();
        }
        let mut rest = partition as u32;
        for p in &self.producers {
            if rest < p.partitions {
                return vec![(p.node, key(p), rest)];
            }
            rest -= p.partitions;
        }
        Vec::new()
    }
}

/// Reads a stage's output from its producer tasks: each output partition
/// merges its sources, each pulled by its own task a bounded number of
/// responses ahead ([`PREFETCH`]).
#[derive(Debug)]
pub struct ExchangeExec {
    spec: ExchangeSpec,
    schema: SchemaRef,
    /// Hash exprs of a shuffle, for display and for planning above it (kept
    /// on the coordinator only).
    hash: Vec<Arc<dyn PhysicalExpr>>,
    /// Dynamic filters used by the stages it reads (transitively): a hash
    /// join above computes its filter only if its probe side names it.
    filters: Vec<Arc<dyn PhysicalExpr>>,
    cluster: Arc<Cluster>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ExchangeExec {
    /// An exchange reading `spec` with rows of `schema`; `hash` are a
    /// shuffle's expressions (its output is hash partitioned by them).
    pub fn new(
        spec: ExchangeSpec,
        schema: SchemaRef,
        hash: Vec<Arc<dyn PhysicalExpr>>,
        cluster: Arc<Cluster>,
    ) -> Self {
        let partitions = spec.output_partitions().max(1);
        let partitioning = if spec.shuffle && !hash.is_empty() {
            Partitioning::Hash(hash.clone(), partitions)
        } else {
            Partitioning::UnknownPartitioning(partitions)
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        ExchangeExec {
            spec,
            schema,
            hash,
            filters: Vec::new(),
            cluster,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// What it reads.
    pub fn spec(&self) -> &ExchangeSpec {
        &self.spec
    }

    /// The same exchange reading `spec`.
    pub fn with_spec(&self, spec: ExchangeSpec) -> Self {
        ExchangeExec::new(
            spec,
            self.schema.clone(),
            self.hash.clone(),
            self.cluster.clone(),
        )
        .with_filters(self.filters.clone())
    }

    /// The same exchange naming the dynamic `filters` of the stages it reads.
    pub fn with_filters(mut self, filters: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        self.filters = filters;
        self
    }
}

impl DisplayAs for ExchangeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<String> = self
            .spec
            .producers
            .iter()
            .map(|p| p.node.to_string())
            .collect();
        if self.spec.shuffle {
            let hash: Vec<String> = self.hash.iter().map(ToString::to_string).collect();
            write!(
                f,
                "ExchangeExec: shuffle from stage {} on nodes [{}]",
                self.spec.stage,
                nodes.join(", ")
            )?;
            if !hash.is_empty() {
                write!(f, " by hash([{}])", hash.join(", "))?;
            }
            write!(f, ", {} partitions", self.spec.partitions)
        } else {
            write!(
                f,
                "ExchangeExec: gather from stage {} on nodes [{}], {} partitions",
                self.spec.stage,
                nodes.join(", "),
                self.spec.output_partitions()
            )
        }
    }
}

impl ExecutionPlan for ExchangeExec {
    fn name(&self) -> &'static str {
        "ExchangeExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        self.hash.iter().chain(&self.filters).apply_until_stop(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let sources = self.spec.sources(partition);
        // Batches received and not yet taken by the operator above count
        // against the query's memory (so its sorts and joins spill sooner).
        let buffered = Arc::new(
            MemoryConsumer::new(format!("ExchangeExec[{partition}]"))
                .register(context.memory_pool()),
        );
        let rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let bytes = MetricBuilder::new(&self.metrics).counter("bytes_received", partition);
        let mut builder = RecordBatchReceiverStreamBuilder::new(
            self.schema.clone(),
            PREFETCH * sources.len().max(1),
        );
        for (node, key, source_partition) in sources {
            let tx = builder.tx();
            let cluster = self.cluster.clone();
            let rows = rows.clone();
            let bytes = bytes.clone();
            let buffered = buffered.clone();
            let fetch = async move {
                loop {
                    let request = ExchangeRequest::Fetch {
                        key,
                        partition: source_partition,
                    };
                    let (ipc, done) = match cluster.call(node, request).await? {
                        ExchangeResponse::Batches { ipc, done } => (ipc, done),
                        ExchangeResponse::Failed { sqlstate, message } => {
                            return Err(remote_error(node, &sqlstate, &message));
                        }
                        other => {
                            return Err(DataFusionError::Internal(format!(
                                "node {node} answered a fetch with {other:?}"
                            )));
                        }
                    };
                    bytes.add(ipc.len());
                    for batch in decode(&ipc)? {
                        rows.add(batch.num_rows());
                        buffered.grow(batch.get_array_memory_size());
                        if tx.send(Ok(batch)).await.is_err() {
                            // The consumer is gone: the query ended.
                            return Ok(());
                        }
                    }
                    if done {
                        return Ok(());
                    }
                }
            };
            // Fetched on the network's runtime: a fetch is waiting, not
            // computing, and must notice a failed producer while the
            // execution threads are busy; the failure then ends the query at
            // once (see `Cluster::fail`).
            let cluster = self.cluster.clone();
            let fetch = async move { fetch.await.map_err(|e| cluster.fail(key.query, node, e)) };
            match self.cluster.network() {
                Some(network) => {
                    let task = AbortOnDropHandle::new(network.spawn(fetch));
                    builder.spawn(async move {
                        task.await.map_err(|e| {
                            DataFusionError::Internal(format!("a fetch task failed: {e}"))
                        })?
                    });
                }
                None => builder.spawn(fetch),
            }
        }
        let stream = builder.build().inspect(move |batch| {
            if let Ok(batch) = batch {
                let size = batch.get_array_memory_size().min(buffered.size());
                buffered.shrink(size);
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// `batches` as one Arrow IPC stream.
///
/// # Errors
/// Arrow's, if a batch does not fit `schema`.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> DfResult<Vec<u8>> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    Ok(writer.into_inner()?)
}

/// The batches of an Arrow IPC stream (none for empty bytes).
///
/// # Errors
/// Arrow's, if the bytes are not an IPC stream.
pub fn decode(ipc: &[u8]) -> DfResult<Vec<RecordBatch>> {
    if ipc.is_empty() {
        return Ok(Vec::new());
    }
    let reader = StreamReader::try_new(Cursor::new(ipc), None)?;
    Ok(reader.collect::<Result<Vec<_>, _>>()?)
}

/// An exchange as a fragment's plan carries it.
#[derive(Serialize, Deserialize)]
struct EncodedExchange {
    spec: ExchangeSpec,
    /// The schema as an empty Arrow IPC stream.
    schema: Vec<u8>,
    /// A shuffle's hash expressions (datafusion-proto `PhysicalExprNode`s),
    /// so that a join above sees both inputs hash partitioned alike.
    hash: Vec<Vec<u8>>,
    /// The dynamic filters it names, likewise.
    filters: Vec<Vec<u8>>,
}

/// datafusion-proto's extension codec for Quarry's plan nodes.
#[derive(Debug)]
pub struct Codec {
    /// The cluster decoded exchanges read through.
    pub cluster: Arc<Cluster>,
}

impl PhysicalExtensionCodec for Codec {
    fn try_decode(
        &self,
        buf: &[u8],
        _inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let encoded: EncodedExchange = postcard::from_bytes(buf)
            .map_err(|e| DataFusionError::Internal(format!("bad exchange in a fragment: {e}")))?;
        let schema = StreamReader::try_new(Cursor::new(&encoded.schema), None)?.schema();
        let decode = |exprs: &[Vec<u8>]| {
            exprs
                .iter()
                .map(|bytes| {
                    let node = PhysicalExprNode::decode(bytes.as_slice()).map_err(|e| {
                        DataFusionError::Internal(format!("bad expression in an exchange: {e}"))
                    })?;
                    parse_physical_expr(&node, ctx, &schema, self)
                })
                .collect::<DfResult<Vec<_>>>()
        };
        let hash = decode(&encoded.hash)?;
        let filters = decode(&encoded.filters)?;
        Ok(Arc::new(
            ExchangeExec::new(encoded.spec, schema, hash, self.cluster.clone())
                .with_filters(filters),
        ))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(exchange) = node.downcast_ref::<ExchangeExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on another node",
                node.name()
            )));
        };
        let encode_all = |exprs: &[Arc<dyn PhysicalExpr>]| {
            exprs
                .iter()
                .map(|e| Ok(serialize_physical_expr(e, self)?.encode_to_vec()))
                .collect::<DfResult<Vec<_>>>()
        };
        let encoded = EncodedExchange {
            spec: exchange.spec.clone(),
            schema: encode(&exchange.schema, &[])?,
            hash: encode_all(&exchange.hash)?,
            filters: encode_all(&exchange.filters)?,
        };
        let bytes = postcard::to_allocvec(&encoded)
            .map_err(|e| DataFusionError::Internal(format!("cannot encode an exchange: {e}")))?;
        buf.extend_from_slice(&bytes);
        Ok(())
    }

    fn try_decode_expr(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn PhysicalExpr>],
        _ctx: &PhysicalExprDecodeCtx<'_>,
    ) -> DfResult<Arc<dyn PhysicalExpr>> {
        super::bloom::decode(buf, inputs)
    }

    fn try_encode_expr(
        &self,
        node: &Arc<dyn PhysicalExpr>,
        buf: &mut Vec<u8>,
        _ctx: &PhysicalExprEncodeCtx<'_>,
    ) -> DfResult<()> {
        super::bloom::encode(node, buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::Peers;
    use async_trait::async_trait;
    use bytes::Bytes;
    use datafusion::arrow::array::Int64Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryPool};
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// A producer on node 2 whose partition is `responses` batches of 1,000
    /// rows, one per fetch.
    #[derive(Debug)]
    struct Producer2 {
        schema: SchemaRef,
        responses: usize,
        fetched: AtomicUsize,
    }

    #[async_trait]
    impl Peers for Producer2 {
        fn local(&self) -> NodeId {
            1
        }

        fn live(&self) -> Vec<NodeId> {
            vec![1, 2]
        }

        fn holder(&self, _chunk: quarry_common::catalog::ChunkId) -> Option<NodeId> {
            None
        }

        async fn call(
            &self,
            _node: NodeId,
            _request: ExchangeRequest,
            _deadline: Duration,
        ) -> Result<ExchangeResponse, String> {
            let n = self.fetched.fetch_add(1, Ordering::SeqCst) + 1;
            let batch = RecordBatch::try_new(
                self.schema.clone(),
                vec![Arc::new(Int64Array::from_iter_values(0..1000))],
            )
            .map_err(|e| e.to_string())?;
            let ipc = encode(&self.schema, &[batch]).map_err(|e| e.to_string())?;
            Ok(ExchangeResponse::Batches {
                ipc: Bytes::from(ipc),
                done: n >= self.responses,
            })
        }
    }

    #[tokio::test]
    async fn batches_waiting_for_the_operator_above_count_against_the_query_memory() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let peers = Arc::new(Producer2 {
            schema: schema.clone(),
            responses: 5,
            fetched: AtomicUsize::new(0),
        });
        let cluster = Arc::new(Cluster::new(peers));
        let spec = ExchangeSpec {
            query: 1,
            stage: 1,
            shuffle: false,
            partitions: 1,
            consumer: 0,
            producers: vec![super::Producer {
                node: 2,
                task: 0,
                partitions: 1,
            }],
        };
        let exchange = ExchangeExec::new(spec, schema, Vec::new(), cluster);
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(64 << 20));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()
            .expect("runtime");
        let context = Arc::new(TaskContext::default().with_runtime(runtime));
        let mut stream = exchange.execute(0, context).expect("stream");
        // Nothing is taken yet: the prefetched batches are held for it.
        let waiting = std::time::Instant::now();
        while pool.reserved() == 0 {
            assert!(
                waiting.elapsed() < Duration::from_secs(10),
                "no buffered batch counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch.expect("batch").num_rows();
        }
        assert_eq!(rows, 5000);
        assert_eq!(pool.reserved(), 0, "taken batches are no longer counted");
    }
}
