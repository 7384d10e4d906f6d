//! Dynamic filters across stages: a hash join's build side, once built,
//! tells the scans of its probe side which keys can match, also when those
//! scans run in other stages on other nodes.
//!
//! DataFusion pushes a hash join's dynamic filter (key bounds, and for small
//! build sides the key set) into the scans below its probe side; the scans
//! read it when they open their files, after the build ([DataFusion's dynamic
//! filters](https://datafusion.apache.org/blog/2025/09/10/dynamic-filters)).
//! Cut into stages, the join and the scans are in different fragments: here
//! each task of the join's stage sends its part of the filter to the nodes
//! whose tasks scan with it ([`FilterPart`], `ExchangeRequest::Filter`); a
//! scanning task starts reading once every building task's part has come, with
//! the parts joined by OR (a row passes if any task's build may match it).
//! This is the runtime filter of Impala and the global runtime filter of
//! StarRocks, carried by DataFusion's own filter expressions.
//!
//! Only hash joins' filters travel: a join's filter is complete once its build
//! side is read, which never depends on its probe side. (A TopK's filter is
//! complete only at the end of its input, so a scan below it cannot wait for
//! it.)

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Operator;
use datafusion::parquet::bloom_filter::Sbbf;
use datafusion::physical_expr::expressions::{
    BinaryExpr, CaseExpr, DynamicFilterPhysicalExpr, InListExpr, Literal, lit,
};
use datafusion::physical_expr::utils::split_disjunction;
use datafusion::physical_expr::{PhysicalExpr, conjunction_opt, split_conjunction};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, HashTableLookupExpr, NestedLoopJoinExec, SortMergeJoinExec,
};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::{ExecutionPlan, replace_children_if_necessary};
use datafusion_proto::physical_plan::from_proto::parse_physical_expr;
use datafusion_proto::physical_plan::to_proto::serialize_physical_expr;
use datafusion_proto::protobuf::PhysicalExprNode;
use prost::Message;
use quarry_common::catalog::NodeId;
use serde::{Deserialize, Serialize};
use tokio_util::task::AbortOnDropHandle;

use super::bloom::{self, BloomBuildExec, BloomFilterExpr, BuildKeys, FilterCodec};
use super::exchange::{ExchangeExec, encode};
use super::{Cluster, ExchangeRequest, ExchangeResponse, FragmentKey};

/// Which dynamic filters a task sends and which its scans wait for (set by
/// the coordinator, which sees every stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRoutes {
    /// Filters built by the task's hash joins: (filter id, the nodes whose
    /// tasks scan with it).
    pub sends: Vec<(u64, Vec<NodeId>)>,
    /// Filters the task's scans wait for: (filter id, how many tasks build a
    /// part of it).
    pub waits: Vec<(u64, u32)>,
    /// How many tasks build a part of each filter the task sends (its
    /// stage's tasks), whose Bloom filters are made one where they are used.
    pub builders: u32,
    /// The filters it sends whose build side is worth a Bloom filter of its
    /// keys ([`reduced`]).
    pub blooms: Vec<u64>,
}

/// One building task's part of a filter, as sent between nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilterPart {
    /// The join's probe-side schema (an empty Arrow IPC stream), which the
    /// filter's columns refer to.
    pub schema: Bytes,
    /// The filter (a datafusion-proto `PhysicalExprNode`).
    pub expr: Bytes,
    /// The join keys it is written in (the join's probe-side key columns),
    /// likewise.
    pub keys: Vec<Bytes>,
}

/// The dynamic filters used in `plan`'s operators, once each (by id), in
/// the order met. With `exchanges`, also those its exchanges name for the
/// stages they read.
pub fn used(
    plan: &Arc<dyn ExecutionPlan>,
    exchanges: bool,
) -> DfResult<Vec<(u64, Arc<dyn PhysicalExpr>)>> {
    let mut found: Vec<(u64, Arc<dyn PhysicalExpr>)> = Vec::new();
    plan.apply(|node| {
        if !exchanges && node.is::<ExchangeExec>() {
            return Ok(TreeNodeRecursion::Continue);
        }
        node.apply_expressions(&mut |root| {
            root.apply(|expr| {
                if expr.is::<DynamicFilterPhysicalExpr>()
                    && let Some(id) = expr.expression_id()
                    && !found.iter().any(|(seen, _)| *seen == id)
                {
                    found.push((id, expr.clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(found)
}

/// Distinct build-side keys, per join partition, up to which a fragment's
/// hash join writes its dynamic filter as the list of its keys (DataFusion's
/// default is 150). Past that the join filters with a reference to its hash
/// table, which cannot leave the node: a scan in another stage then gets the
/// keys' bounds alone, and sends on every row between them. A list costs
/// each scan that receives it time in every file it opens (DataFusion
/// builds pruning sets and guarantees from it), which lists of many
/// thousands of keys did not repay: with this set to 10,000, TPC-H Q8 at
/// SF1 on 3 nodes went from 0.39 to 0.65 s; with 1,000 it is unchanged
/// (benches/RESULTS.md, session 9; Trino's
/// former per-driver limit, "dynamic filter collection thresholds" in
/// [its documentation](https://trino.io/docs/current/admin/dynamic-filtering.html)).
pub const SENT_KEYS_MAX: usize = 1_000;

/// Bytes of a join partition's build-side key columns (all its rows, not
/// only the distinct keys) up to which the list is written (DataFusion's
/// default is 128 KiB).
pub const SENT_KEYS_MAX_BYTES: usize = 1 << 20;

/// Sets a fragment's options so that its joins' dynamic filters can travel
/// as key lists ([`SENT_KEYS_MAX`]).
pub fn sent_as_keys(options: &mut ConfigOptions) {
    options
        .optimizer
        .hash_join_inlist_pushdown_max_distinct_values = SENT_KEYS_MAX;
    options.optimizer.hash_join_inlist_pushdown_max_size = SENT_KEYS_MAX_BYTES;
}

/// A filter a hash join builds.
#[derive(Debug, Clone)]
pub struct Built {
    /// The join's dynamic filter.
    pub filter: Arc<dyn PhysicalExpr>,
    /// The join's probe-side schema, which the filter's columns refer to.
    pub schema: SchemaRef,
    /// The hashes of its build side's keys, when recorded
    /// ([`with_bloom_builds`]).
    pub keys: Option<Arc<BuildKeys>>,
    /// The join's build side.
    pub build: Arc<dyn ExecutionPlan>,
}

/// The dynamic filters `plan`'s hash joins build, by id.
pub fn built(plan: &Arc<dyn ExecutionPlan>) -> DfResult<HashMap<u64, Built>> {
    let mut found = HashMap::new();
    plan.apply(|node| {
        if let Some(join) = node.downcast_ref::<HashJoinExec>() {
            let keys = join
                .left()
                .downcast_ref::<BloomBuildExec>()
                .map(|build| build.seen().clone());
            for filter in node.dynamic_expressions_produced() {
                if let Some(id) = filter.expression_id() {
                    let schema = join.right().schema();
                    let (keys, build) = (keys.clone(), join.left().clone());
                    found.insert(
                        id,
                        Built {
                            filter,
                            schema,
                            keys,
                            build,
                        },
                    );
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(found)
}

/// `plan` with the build side of each hash join whose filter is sent with
/// a Bloom filter (`routes.blooms`) recording its keys' hashes
/// ([`BloomBuildExec`]), so that the filter can carry a Bloom filter of them
/// ([`part`]).
///
/// # Errors
/// DataFusion's, if a join cannot take its new input.
pub fn with_bloom_builds(
    plan: Arc<dyn ExecutionPlan>,
    routes: &FilterRoutes,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    if routes.blooms.is_empty() {
        return Ok(plan);
    }
    Ok(plan
        .transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else {
                return Ok(Transformed::no(node));
            };
            let with_bloom = node.dynamic_expressions_produced().iter().any(|filter| {
                filter
                    .expression_id()
                    .is_some_and(|id| routes.blooms.contains(&id))
            });
            if !with_bloom || join.left().is::<BloomBuildExec>() {
                return Ok(Transformed::no(node));
            }
            let keys = join.on().iter().map(|(left, _)| left.clone()).collect();
            let build = Arc::new(BloomBuildExec::new(
                join.left().clone(),
                keys,
                Arc::new(BuildKeys::new(routes.builders.max(1))),
            ));
            let probe = join.right().clone();
            Ok(Transformed::yes(replace_children_if_necessary(
                node,
                vec![build, probe],
            )?))
        })?
        .data)
}

/// The filters `plan` waits for: those its operators use (scans, filters)
/// that no join of its own builds. Exchanges only name filters for the
/// stages they read, so they do not count.
pub fn awaited(plan: &Arc<dyn ExecutionPlan>) -> DfResult<Vec<u64>> {
    let built = built(plan)?;
    Ok(used(plan, false)?
        .into_iter()
        .map(|(id, _)| id)
        .filter(|id| !built.contains_key(id))
        .collect())
}

/// The routes of every stage's tasks, given each stage's plan and the nodes of
/// its tasks (stage 0 is the root, on the coordinator). A filter is routed
/// when exactly one stage's joins build it; a scan whose filter is not routed
/// reads without it, as before.
pub fn routes(
    stages: &[(u32, &Arc<dyn ExecutionPlan>, &[NodeId])],
) -> DfResult<HashMap<u32, FilterRoutes>> {
    let mut builders: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut build_sides: HashMap<u64, Arc<dyn ExecutionPlan>> = HashMap::new();
    let mut waiters: Vec<(u32, Vec<u64>)> = Vec::new();
    for (stage, plan, _) in stages {
        for (id, built) in built(plan)? {
            builders.entry(id).or_default().push(*stage);
            build_sides.insert(id, built.build);
        }
        waiters.push((*stage, awaited(plan)?));
    }
    let plans: HashMap<u32, &Arc<dyn ExecutionPlan>> = stages
        .iter()
        .map(|(stage, plan, _)| (*stage, *plan))
        .collect();
    let nodes_of = |stage: u32| {
        stages
            .iter()
            .find(|(s, _, _)| *s == stage)
            .map(|(_, _, nodes)| *nodes)
            .unwrap_or_default()
    };
    let mut routes: HashMap<u32, FilterRoutes> = HashMap::new();
    let mut sends: BTreeMap<(u32, u64), Vec<NodeId>> = BTreeMap::new();
    for (stage, ids) in waiters {
        for id in ids {
            let Some([builder]) = builders.get(&id).map(Vec::as_slice) else {
                continue;
            };
            if *builder == stage {
                continue;
            }
            let tasks = nodes_of(*builder).len() as u32;
            routes.entry(stage).or_default().waits.push((id, tasks));
            let to = sends.entry((*builder, id)).or_default();
            for node in nodes_of(stage) {
                if !to.contains(node) {
                    to.push(*node);
                }
            }
        }
    }
    for ((stage, id), to) in sends {
        let routes = routes.entry(stage).or_default();
        routes.sends.push((id, to));
        routes.builders = nodes_of(stage).len() as u32;
        if let Some(build) = build_sides.get(&id)
            && reduced(build, &plans)?
        {
            routes.blooms.push(id);
        }
    }
    Ok(routes)
}

/// Whether `plan` may yield fewer rows than the tables it reads hold: a
/// filter, a limit, a join or a scan with a predicate lies below it (also in
/// the stages its exchanges read, found in `stages`). Only such a build side
/// is worth a Bloom filter of its keys: a whole table's keys (TPC-H Q9's
/// orders, joined with lineitem) rule out no row whose foreign key refers to
/// them, and the filter would only cost time to build, send and test. This
/// is Spark's condition for a runtime Bloom filter, a selective predicate on
/// the side that builds it (SPARK-32268, `InjectRuntimeFilter`).
///
/// # Errors
/// DataFusion's, if the plan cannot be visited.
pub fn reduced(
    plan: &Arc<dyn ExecutionPlan>,
    stages: &HashMap<u32, &Arc<dyn ExecutionPlan>>,
) -> DfResult<bool> {
    plan.exists(|node| {
        if let Some(exchange) = node.downcast_ref::<ExchangeExec>() {
            return match stages.get(&exchange.spec().stage) {
                Some(read) => reduced(read, stages),
                None => Ok(true),
            };
        }
        if let Some(scan) = node.downcast_ref::<DataSourceExec>() {
            return Ok(scan
                .data_source()
                .downcast_ref::<FileScanConfig>()
                .is_some_and(|config| config.file_source().filter().is_some()));
        }
        Ok(node.is::<FilterExec>()
            || node.is::<GlobalLimitExec>()
            || node.is::<LocalLimitExec>()
            || node.is::<HashJoinExec>()
            || node.is::<NestedLoopJoinExec>()
            || node.is::<SortMergeJoinExec>()
            || node.is::<CrossJoinExec>())
    })
}

/// A join's finished filter as a part to send, with the hash routing between
/// its partitions taken out: `CASE hash(key) % n WHEN i THEN f_i … END`
/// becomes `f_0 OR … OR f_n` (a row may go to any task's partitions, and the
/// routing hash of one task's partitions says nothing about another's).
/// Each reference to a partition's hash table (which cannot leave the node)
/// becomes a test against `bloom`, the Bloom filter of every key the task's
/// build side has; without it, the reference is sent as `true`.
///
/// # Errors
/// DataFusion's, if the filter cannot be serialized.
pub fn part(
    filter: &Arc<dyn PhysicalExpr>,
    schema: &SchemaRef,
    bloom: Option<&Arc<Sbbf>>,
) -> DfResult<FilterPart> {
    let (current, keys) = match filter.downcast_ref::<DynamicFilterPhysicalExpr>() {
        Some(dynamic) => (dynamic.current()?, filter.children()),
        None => (filter.clone(), Vec::new()),
    };
    let unrouted = current
        .transform_up(|expr| {
            let Some(case) = expr.downcast_ref::<CaseExpr>() else {
                return Ok(Transformed::no(expr));
            };
            if case.expr().is_none() {
                return Ok(Transformed::no(expr));
            }
            let branches = case
                .when_then_expr()
                .iter()
                .map(|(_, then)| then.clone())
                .chain(case.else_expr().cloned());
            Ok(Transformed::yes(any_of(branches)))
        })?
        .data
        .transform_up(|expr| match bloom {
            Some(bloom) if expr.is::<HashTableLookupExpr>() => {
                let keys = expr.children().into_iter().cloned().collect();
                Ok(Transformed::yes(
                    Arc::new(BloomFilterExpr::new(keys, vec![bloom.clone()])) as _,
                ))
            }
            _ => Ok(Transformed::no(expr)),
        })?
        .data;
    let codec = FilterCodec;
    let encoded = |e: &Arc<dyn PhysicalExpr>| {
        Ok(Bytes::from(
            serialize_physical_expr(e, &codec)?.encode_to_vec(),
        ))
    };
    Ok(FilterPart {
        schema: Bytes::from(encode(schema, &[])?),
        expr: encoded(&unrouted)?,
        keys: keys.into_iter().map(encoded).collect::<DfResult<_>>()?,
    })
}

/// The OR of building tasks' filters, with their key sets made one.
///
/// Each task's filter is an OR of branches, one per join partition, each the
/// partition's key bounds AND its key set: a list (`k >= 1 AND k <= 9 AND
/// k IN (1, 9)`) or a Bloom filter. Written as given, a row that passes none
/// is tested against every task's set in turn. When every branch has one set
/// over the same keys, `(b_1 OR … OR b_n) AND (k IN (l_1 ∪ … ∪ l_m) OR
/// bloom(k, f_1 … f_p))` is tested instead: the keys are looked up (or
/// hashed) once a row, and it lets through every row the branches do (and,
/// through the bounds of one and the set of another, a few more, which the
/// join then drops). Otherwise the filters are joined as they are.
///
/// # Errors
/// DataFusion's, if the union list cannot be built.
fn union_of(
    filters: Vec<Arc<dyn PhysicalExpr>>,
    schema: &SchemaRef,
) -> DfResult<Arc<dyn PhysicalExpr>> {
    // A partition that built nothing contributes `false`.
    let branches = filters
        .iter()
        .flat_map(split_disjunction)
        .filter(|branch| !is_false(branch));
    let mut list_keys: Option<Arc<dyn PhysicalExpr>> = None;
    let mut values = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut bloom_keys: Option<Vec<Arc<dyn PhysicalExpr>>> = None;
    let mut blooms: Vec<Arc<Sbbf>> = Vec::new();
    let mut bounds = Vec::new();
    for branch in branches {
        let conjuncts = split_conjunction(branch);
        let mut sets = conjuncts.iter().filter(|c| {
            c.is::<BloomFilterExpr>()
                || c.downcast_ref::<InListExpr>()
                    .is_some_and(|list| !list.negated())
        });
        let (Some(&set), None) = (sets.next(), sets.next()) else {
            return Ok(any_of(filters));
        };
        if let Some(bloom) = set.downcast_ref::<BloomFilterExpr>() {
            if bloom_keys.get_or_insert_with(|| bloom.keys().to_vec()) != bloom.keys() {
                return Ok(any_of(filters));
            }
            for filter in bloom.filters() {
                if !blooms.iter().any(|seen| Arc::ptr_eq(seen, filter)) {
                    blooms.push(filter.clone());
                }
            }
        } else if let Some(list) = set.downcast_ref::<InListExpr>() {
            if list_keys.get_or_insert_with(|| list.expr().clone()) != list.expr() {
                return Ok(any_of(filters));
            }
            for value in list.list() {
                let Some(literal) = value.downcast_ref::<Literal>() else {
                    return Ok(any_of(filters));
                };
                if seen.insert(literal.value().clone()) {
                    values.push(value.clone());
                }
            }
        }
        bounds.push(conjunction_opt(
            conjuncts
                .into_iter()
                .filter(|c| !Arc::ptr_eq(c, set))
                .cloned(),
        ));
    }
    let list = list_keys
        .map(|keys| InListExpr::try_new(keys, values, false, schema))
        .transpose()?
        .map(|list| Arc::new(list) as Arc<dyn PhysicalExpr>);
    let bloom = match bloom_keys {
        Some(keys) => Some(
            Arc::new(BloomFilterExpr::new(keys, bloom::merged(&blooms)?)) as Arc<dyn PhysicalExpr>,
        ),
        None => None,
    };
    if list.is_none() && bloom.is_none() {
        return Ok(any_of(filters));
    }
    let sets = any_of(list.into_iter().chain(bloom));
    // A branch with its set alone bounds nothing.
    Ok(match bounds.into_iter().collect::<Option<Vec<_>>>() {
        Some(bounds) => Arc::new(BinaryExpr::new(any_of(bounds), Operator::And, sets)),
        None => sets,
    })
}

/// Whether `expr` is the literal `false`.
fn is_false(expr: &Arc<dyn PhysicalExpr>) -> bool {
    expr.downcast_ref::<Literal>()
        .is_some_and(|l| l.value() == &datafusion::common::ScalarValue::Boolean(Some(false)))
}

/// `exprs` joined by OR (false for none).
fn any_of(exprs: impl IntoIterator<Item = Arc<dyn PhysicalExpr>>) -> Arc<dyn PhysicalExpr> {
    exprs
        .into_iter()
        .reduce(|a, b| Arc::new(BinaryExpr::new(a, Operator::Or, b)))
        .unwrap_or_else(|| lit(false))
}

/// Sets the filter `id` in `plan` to the OR of `parts` (one per building
/// task) and marks it complete, so the scans using it read with it.
///
/// # Errors
/// DataFusion's, if a part does not decode.
pub fn apply(
    plan: &Arc<dyn ExecutionPlan>,
    id: u64,
    parts: &[FilterPart],
    ctx: &TaskContext,
) -> DfResult<()> {
    let Some((_, target)) = used(plan, false)?.into_iter().find(|(used, _)| *used == id) else {
        return Ok(());
    };
    let codec = FilterCodec;
    let schema_of = |part: &FilterPart| -> DfResult<SchemaRef> {
        Ok(StreamReader::try_new(Cursor::new(&part.schema), None)?.schema())
    };
    let decoded = |part: &FilterPart, bytes: &Bytes| {
        let node = PhysicalExprNode::decode(bytes.as_ref()).map_err(|e| {
            DataFusionError::Internal(format!("a dynamic filter does not decode: {e}"))
        })?;
        let schema = schema_of(part)?;
        parse_physical_expr(&node, ctx, &schema, &codec)
    };
    let combined = match parts.first() {
        Some(first) => union_of(
            parts
                .iter()
                .map(|part| decoded(part, &part.expr))
                .collect::<DfResult<Vec<_>>>()?,
            &schema_of(first)?,
        )?,
        None => lit(false),
    };
    // Every building task writes its part in the same join keys.
    let keys = match parts.first() {
        Some(part) => part
            .keys
            .iter()
            .map(|key| decoded(part, key))
            .collect::<DfResult<Vec<_>>>()?,
        None => Vec::new(),
    };
    // Every use of the filter shares its state, each with its own columns
    // (the scan's, the file's). The state is kept in the join's key
    // columns, which each use maps to its own: so the update goes through
    // a view of the filter in those columns, not through a use's view.
    let view = if keys.is_empty() {
        target
    } else {
        target.with_new_children(keys)?
    };
    if let Some(dynamic) = view.downcast_ref::<DynamicFilterPhysicalExpr>() {
        dynamic.update(combined)?;
        dynamic.mark_complete();
    }
    Ok(())
}

/// Pause between attempts to send a dynamic filter part.
const RETRY: Duration = Duration::from_millis(100);

/// Starts sending the dynamic filters `plan`'s hash joins build (`sends`:
/// filter id and the nodes waiting for it), each once its join's build side
/// is read. Dropping the handles stops the sending (the query ended).
///
/// # Errors
/// DataFusion's, if the plan's operators cannot be visited.
pub fn send(
    cluster: &Arc<Cluster>,
    plan: &Arc<dyn ExecutionPlan>,
    from: FragmentKey,
    sends: &[(u64, Vec<NodeId>)],
) -> DfResult<Vec<AbortOnDropHandle<()>>> {
    if sends.is_empty() {
        return Ok(Vec::new());
    }
    let built = built(plan)?;
    let senders = sends.iter().filter_map(|(id, to)| {
        let Built {
            filter,
            schema,
            keys,
            ..
        } = built.get(id).cloned()?;
        let (cluster, id, to) = (cluster.clone(), *id, to.clone());
        Some(AbortOnDropHandle::new(tokio::spawn(async move {
            if let Some(dynamic) = filter.downcast_ref::<DynamicFilterPhysicalExpr>() {
                dynamic.wait_complete().await;
            }
            let bloom = keys.and_then(|keys| keys.bloom());
            // A filter that does not serialize lets every row through.
            let part = part(&filter, &schema, bloom.as_ref()).or_else(|e| {
                tracing::warn!(error = %e, "a dynamic filter is sent as true");
                part(&lit(true), &schema, None)
            });
            match part {
                Ok(part) => deliver(&cluster, from, id, &part, &to).await,
                Err(e) => tracing::error!(error = %e, "cannot send a dynamic filter"),
            }
        })))
    });
    Ok(senders.collect())
}

/// Sends `part` to each of `nodes`, each until delivered or the query ends
/// (which aborts the sender).
async fn deliver(
    cluster: &Arc<Cluster>,
    from: FragmentKey,
    id: u64,
    part: &FilterPart,
    nodes: &[NodeId],
) {
    for node in nodes {
        loop {
            let request = ExchangeRequest::Filter {
                filter: id,
                from,
                part: part.clone(),
            };
            match cluster.call(*node, request).await {
                Ok(ExchangeResponse::Received) => break,
                other => {
                    tracing::debug!(node, ?other, "a dynamic filter not delivered yet");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::{col, in_list};
    use datafusion::prelude::SessionContext;

    #[test]
    fn parts_of_two_tasks_let_through_the_keys_of_either() {
        // The join's probe side has the key third; the scan second; the
        // file reader reads the key column alone.
        let field = |name: &str| Field::new(name, DataType::Int64, false);
        let schema = Arc::new(Schema::new(vec![field("a"), field("b"), field("k")]));
        let scan_schema = Arc::new(Schema::new(vec![field("x"), field("k")]));
        let read_schema = Arc::new(Schema::new(vec![field("k")]));
        let k = col("k", &schema).expect("column");
        let filter: Arc<dyn PhysicalExpr> =
            Arc::new(DynamicFilterPhysicalExpr::new(vec![k.clone()], lit(true)));
        let keys = |values: &[i64]| {
            let list = values.iter().map(|v| lit(*v)).collect();
            in_list(k.clone(), list, &false, &schema).expect("in list")
        };
        // Task 0 routes between its two partitions, as DataFusion builds it;
        // its routing does not place 2 and 7 where the scan's rows would
        // look for them, so only a filter with the routing taken out lets
        // them through.
        let routed: Arc<dyn PhysicalExpr> = Arc::new(
            CaseExpr::try_new(
                Some(Arc::new(BinaryExpr::new(
                    k.clone(),
                    Operator::Modulo,
                    lit(2i64),
                ))),
                vec![(lit(0i64), keys(&[7])), (lit(1i64), keys(&[2]))],
                Some(lit(false)),
            )
            .expect("case"),
        );
        let ctx = SessionContext::new().task_ctx();
        // Each task's join updates its own copy of the filter.
        let built = |expr: Arc<dyn PhysicalExpr>| {
            let copy = DynamicFilterPhysicalExpr::new(vec![k.clone()], lit(true));
            copy.update(expr).expect("update");
            copy.mark_complete();
            Arc::new(copy) as Arc<dyn PhysicalExpr>
        };
        let first = part(&built(routed), &schema, None).expect("part");
        let second = part(&built(keys(&[10])), &schema, None).expect("part");

        // A scan in another stage uses the same filter (its id travels in
        // the plan), in its own columns, and reads files with it in theirs.
        let scan_filter = filter
            .clone()
            .with_new_children(vec![col("k", &scan_schema).expect("column")])
            .expect("scan's view");
        let read_filter = scan_filter
            .clone()
            .with_new_children(vec![col("k", &read_schema).expect("column")])
            .expect("reader's view");
        let plan: Arc<dyn ExecutionPlan> = Arc::new(
            datafusion::physical_plan::filter::FilterExec::try_new(
                scan_filter,
                Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                    scan_schema.clone(),
                )),
            )
            .expect("filter"),
        );
        assert_eq!(awaited(&plan).expect("awaited").len(), 1);
        let id = filter.expression_id().expect("id");
        apply(&plan, id, &[first, second], &ctx).expect("apply");

        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            read_schema.clone(),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                1, 2, 7, 9, 10,
            ]))],
        )
        .expect("batch");
        // 2 and 7 from task 0's two partitions (the routing dropped), 10
        // from task 1.
        assert_eq!(
            passes(&read_filter, &batch),
            vec![false, true, true, false, true]
        );
    }

    /// Which rows of `batch` pass `filter`.
    fn passes(
        filter: &Arc<dyn PhysicalExpr>,
        batch: &datafusion::arrow::record_batch::RecordBatch,
    ) -> Vec<bool> {
        let passed = filter
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .expect("evaluate");
        passed
            .as_any()
            .downcast_ref::<datafusion::arrow::array::BooleanArray>()
            .expect("booleans")
            .iter()
            .map(|b| b.unwrap_or(false))
            .collect()
    }

    /// A scan's dynamic filter over `k`, set from building tasks' `parts`.
    fn applied(
        k: &Arc<dyn PhysicalExpr>,
        schema: &SchemaRef,
        parts: &[FilterPart],
    ) -> Arc<dyn PhysicalExpr> {
        let filter: Arc<dyn PhysicalExpr> =
            Arc::new(DynamicFilterPhysicalExpr::new(vec![k.clone()], lit(true)));
        let plan: Arc<dyn ExecutionPlan> = Arc::new(
            datafusion::physical_plan::filter::FilterExec::try_new(
                filter.clone(),
                Arc::new(datafusion::physical_plan::empty::EmptyExec::new(
                    schema.clone(),
                )),
            )
            .expect("filter"),
        );
        let id = filter.expression_id().expect("id");
        let ctx = SessionContext::new().task_ctx();
        apply(&plan, id, parts, &ctx).expect("apply");
        filter
    }

    #[test]
    fn key_lists_of_all_tasks_are_tested_as_one() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let k = col("k", &schema).expect("column");
        // What a join partition builds: its key bounds and its keys.
        let branch = |values: &[i64]| -> Arc<dyn PhysicalExpr> {
            let (min, max) = (values[0], values[values.len() - 1]);
            let bounds = Arc::new(BinaryExpr::new(
                Arc::new(BinaryExpr::new(k.clone(), Operator::GtEq, lit(min))),
                Operator::And,
                Arc::new(BinaryExpr::new(k.clone(), Operator::LtEq, lit(max))),
            ));
            let list = in_list(
                k.clone(),
                values.iter().map(|v| lit(*v)).collect(),
                &false,
                &schema,
            )
            .expect("in list");
            Arc::new(BinaryExpr::new(bounds, Operator::And, list))
        };
        let built = |expr: Arc<dyn PhysicalExpr>| {
            let copy = DynamicFilterPhysicalExpr::new(vec![k.clone()], lit(true));
            copy.update(expr).expect("update");
            copy.mark_complete();
            Arc::new(copy) as Arc<dyn PhysicalExpr>
        };
        // Task 0 has two partitions, one of which built nothing; task 1 one,
        // sharing key 9 with task 0.
        let first = part(
            &built(Arc::new(BinaryExpr::new(
                branch(&[3, 9]),
                Operator::Or,
                lit(false),
            ))),
            &schema,
            None,
        )
        .expect("part");
        let second = part(&built(branch(&[9, 20, 30])), &schema, None).expect("part");
        let filter = applied(&k, &schema, &[first, second]);

        let applied = filter
            .downcast_ref::<DynamicFilterPhysicalExpr>()
            .expect("dynamic")
            .current()
            .expect("current");
        let mut lists = Vec::new();
        applied
            .apply(|expr| {
                if let Some(list) = expr.downcast_ref::<InListExpr>() {
                    lists.push(list.len());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("visit");
        assert_eq!(lists, vec![4], "one list of the distinct keys: {applied}");
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                3, 4, 9, 20, 25, 30, 31,
            ]))],
        )
        .expect("batch");
        assert_eq!(
            passes(&filter, &batch),
            vec![true, false, true, true, false, true, false]
        );
    }

    #[test]
    fn hash_table_references_travel_as_the_build_sides_bloom_filters() {
        use datafusion::physical_plan::joins::join_hash_map::JoinHashMapU32;
        use datafusion::physical_plan::joins::{Map, SeededRandomState};
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let k = col("k", &schema).expect("column");
        let ctx = SessionContext::new().task_ctx();
        let batch = |keys: Vec<i64>| {
            datafusion::arrow::record_batch::RecordBatch::try_new(
                schema.clone(),
                vec![Arc::new(datafusion::arrow::array::Int64Array::from(keys))],
            )
            .expect("batch")
        };
        // What a task whose join partition has too many keys for a list
        // builds: the bounds AND a reference to its hash table (empty here:
        // it cannot leave the node either way).
        let built = |min: i64, max: i64| {
            let bounds = Arc::new(BinaryExpr::new(
                Arc::new(BinaryExpr::new(k.clone(), Operator::GtEq, lit(min))),
                Operator::And,
                Arc::new(BinaryExpr::new(k.clone(), Operator::LtEq, lit(max))),
            ));
            let lookup = Arc::new(HashTableLookupExpr::new(
                vec![k.clone()],
                SeededRandomState::with_seed(0),
                Arc::new(Map::HashMap(Box::new(JoinHashMapU32::with_capacity(0)))),
                "hash_lookup".to_string(),
            ));
            let filter = DynamicFilterPhysicalExpr::new(vec![k.clone()], lit(true));
            filter
                .update(Arc::new(BinaryExpr::new(bounds, Operator::And, lookup)))
                .expect("update");
            filter.mark_complete();
            Arc::new(filter) as Arc<dyn PhysicalExpr>
        };
        let bloom_of = |keys: Vec<i64>| {
            let seen = BuildKeys::new(1);
            seen.record(std::slice::from_ref(&k), &batch(keys), &ctx)
                .expect("record");
            seen.bloom().expect("a filter")
        };
        // Two tasks: keys 0, 2, …, 19,998 and 1, 3, …, 1,999.
        let evens: Vec<i64> = (0..10_000).map(|i| i * 2).collect();
        let odds: Vec<i64> = (0..1_000).map(|i| i * 2 + 1).collect();
        let first = part(&built(0, 19_998), &schema, Some(&bloom_of(evens.clone()))).expect("part");
        let second = part(&built(1, 1_999), &schema, Some(&bloom_of(odds))).expect("part");
        let filter = applied(&k, &schema, &[first, second]);
        let current = filter
            .downcast_ref::<DynamicFilterPhysicalExpr>()
            .expect("dynamic")
            .current()
            .expect("current");
        let mut blooms = Vec::new();
        current
            .apply(|expr| {
                if let Some(bloom) = expr.downcast_ref::<BloomFilterExpr>() {
                    blooms.push(bloom.filters().len());
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .expect("visit");
        assert_eq!(
            blooms,
            vec![2],
            "one test of both tasks' filters: {current}"
        );
        // Every key of either task passes; of the 9,000 odd keys neither has,
        // about one in a hundred.
        let built_keys = (0..20_000).filter(|k| k % 2 == 0 || *k < 2_000).collect();
        assert!(passes(&filter, &batch(built_keys)).iter().all(|p| *p));
        let absent = (2_000..20_000).filter(|k| k % 2 == 1).collect();
        let false_positives = passes(&filter, &batch(absent))
            .iter()
            .filter(|p| **p)
            .count();
        assert!(
            false_positives < 300,
            "{false_positives} of 9,000 absent keys pass"
        );
        assert_eq!(
            passes(&filter, &batch(vec![-1, 20_001])),
            vec![false, false]
        );
        // Without a Bloom filter only the bounds travel.
        let bounds_only = applied(
            &k,
            &schema,
            &[part(&built(0, 19_998), &schema, None).expect("part")],
        );
        assert!(
            passes(&bounds_only, &batch((0..19_999).collect()))
                .iter()
                .all(|p| *p)
        );
    }

    #[test]
    fn filters_without_one_key_list_are_joined_as_they_are() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let k = col("k", &schema).expect("column");
        let at_least = |v: i64| -> Arc<dyn PhysicalExpr> {
            Arc::new(BinaryExpr::new(k.clone(), Operator::GtEq, lit(v)))
        };
        let listed = in_list(k.clone(), vec![lit(1i64)], &false, &schema).expect("in list");
        let joined = union_of(vec![at_least(5), listed], &schema).expect("union");
        let batch = datafusion::arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(datafusion::arrow::array::Int64Array::from(vec![
                1, 2, 7,
            ]))],
        )
        .expect("batch");
        assert_eq!(passes(&joined, &batch), vec![true, false, true]);
    }
}
