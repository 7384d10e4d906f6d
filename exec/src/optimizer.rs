//! Logical optimizer rules of Quarry's own.

use datafusion::common::NullEquality;
use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator, and};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Turns an equality key of an inner join whose side reads more than one
/// relation (`JOIN y ON y.c = x1.a + x2.b` over `x1 JOIN x2`) into a join
/// filter, just before DataFusion's `eliminate_cross_join`.
///
/// That rule flattens a tree of inner joins into its inputs and their keys
/// and joins the inputs again pairwise by keys whose sides each read one
/// input; a key that matches no pair is dropped (DataFusion 55), so the
/// query returned rows that do not satisfy it. Join filters it keeps. A
/// `push_down_filter` after it makes the equality a join key again where
/// both sides fit the new join order, so the join stays a hash join.
#[derive(Debug, Default)]
pub struct CompoundJoinKeysAsFilters;

/// How many relations (qualifiers) the columns of `expr` come from.
fn relations(expr: &Expr) -> usize {
    let mut qualifiers: Vec<_> = expr
        .column_refs()
        .into_iter()
        .map(|c| c.relation.clone())
        .collect();
    qualifiers.sort_by_key(|q| q.as_ref().map(ToString::to_string));
    qualifiers.dedup();
    qualifiers.len()
}

impl OptimizerRule for CompoundJoinKeysAsFilters {
    fn name(&self) -> &str {
        "compound_join_keys_as_filters"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> DfResult<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(mut join) = plan else {
            return Ok(Transformed::no(plan));
        };
        let inner = |plan: &LogicalPlan| matches!(plan, LogicalPlan::Join(j) if j.join_type == JoinType::Inner);
        // eliminate_cross_join flattens only inner joins over inner joins.
        if join.join_type != JoinType::Inner || !(inner(&join.left) || inner(&join.right)) {
            return Ok(Transformed::no(LogicalPlan::Join(join)));
        }
        let (compound, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut join.on)
            .into_iter()
            .partition(|(left, right)| relations(left) > 1 || relations(right) > 1);
        join.on = kept;
        if compound.is_empty() {
            return Ok(Transformed::no(LogicalPlan::Join(join)));
        }
        let null_equal = join.null_equality == NullEquality::NullEqualsNull;
        let equalities = compound.into_iter().map(|(left, right)| {
            if null_equal {
                Expr::BinaryExpr(BinaryExpr::new(
                    Box::new(left),
                    Operator::IsNotDistinctFrom,
                    Box::new(right),
                ))
            } else {
                left.eq(right)
            }
        });
        join.filter = equalities.chain(join.filter.take()).reduce(and);
        Ok(Transformed::yes(LogicalPlan::Join(join)))
    }
}

/// DataFusion's logical optimizer rules with Quarry's in their places.
pub fn rules(
    share_subplans: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::sync::Arc<dyn OptimizerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Optimizer::new().rules;
    let at = rules
        .iter()
        .position(|rule| rule.name() == "eliminate_cross_join")
        .unwrap_or(rules.len());
    rules.insert(at, std::sync::Arc::new(CompoundJoinKeysAsFilters));
    // Last: subplans still alike once the others are done are shared.
    rules.push(std::sync::Arc::new(crate::shared::ShareCommonSubqueries {
        enabled: share_subplans,
    }));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    async fn count(ctx: &SessionContext, sql: &str) -> i64 {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let counts = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(counts.len(), 1);
        counts.value(0)
    }

    /// Four rows of x1 × x2 × y satisfy both keys; without the rule the
    /// compound key was dropped and eight rows came back.
    #[tokio::test]
    async fn a_key_over_two_joined_relations_is_kept() {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules(rules(Default::default()))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let sql = "SELECT count(*) FROM (VALUES (1), (2)) x1(a) \
                   JOIN (VALUES (10), (20)) x2(b) ON x1.a < x2.b \
                   JOIN (VALUES (1, 11), (1, 21), (2, 12), (2, 22)) y(a, c) \
                   ON y.a = x1.a AND y.c = x1.a + x2.b";
        assert_eq!(count(&ctx, sql).await, 4);
        let null_safe = "SELECT count(*) FROM (VALUES (1), (2)) x1(a) \
                   JOIN (VALUES (10), (20)) x2(b) ON x1.a < x2.b \
                   JOIN (VALUES (1, 11), (1, 21), (2, 12), (2, 22)) y(a, c) \
                   ON y.a = x1.a AND y.c IS NOT DISTINCT FROM x1.a + x2.b";
        assert_eq!(count(&ctx, null_safe).await, 4);
        // Where the join order allows it, the compound key is a hash key
        // again in the final plan.
        let keyed = "SELECT count(*) FROM (VALUES (1, 1), (2, 2)) x1(k, a) \
                   JOIN (VALUES (1, 10), (2, 20)) x2(k, b) ON x1.k = x2.k \
                   JOIN (VALUES (11), (22), (33)) y(c) ON y.c = x1.a + x2.b";
        assert_eq!(count(&ctx, keyed).await, 2);
        let plan = ctx
            .sql(&format!("EXPLAIN {keyed}"))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&plan)
            .unwrap()
            .to_string();
        assert!(!text.contains("NestedLoopJoinExec"), "{text}");
    }
}
