//! `CANCEL JOB 'id'`: stops a job on whichever node runs it. `ALTER NODE n
//! DRAIN | RESUME`: takes a node out of service for maintenance, or back.
//! `ALTER NODE n DECOMMISSION`: empties a node and removes it.

use super::*;
use quarry_common::catalog::Maintenance;

impl Session {
    /// Whose jobs this session may cancel, by the newest catalog (None:
    /// everyone's).
    async fn canceller(&self) -> Result<crate::jobs::Viewer> {
        let latest = self.engine.catalog().await?;
        Ok(crate::jobs::viewer(
            &latest,
            self.user.role,
            quarry_common::roles::SIGNAL_BACKEND,
        ))
    }

    /// `CANCEL JOB 'job_id'`: 42704 for a job no node knows, 55000 for one
    /// that is no longer running, 42501 for another role's job.
    pub(super) async fn cancel_job(&self, job_id: &str) -> Result<Output> {
        let Some(source) = self.engine.jobs.get() else {
            return Err(user_error(
                SqlState::FEATURE_NOT_SUPPORTED,
                "this node keeps no job history",
            ));
        };
        let viewer = self.canceller().await?;
        if !source.cancel_job(job_id, &viewer).await? {
            return Err(user_error(
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("job \"{job_id}\" is not running"),
            ));
        }
        Ok(Output::Command(CommandTag::new("CANCEL JOB")))
    }

    /// 42501 unless this session's role is a superuser, by the newest
    /// catalog (returned); `what` says what it may not do.
    pub(super) async fn superuser_catalog(&self, what: &str) -> Result<Arc<Catalog>> {
        // By the newest catalog: these statements pin no snapshot.
        let latest = self.engine.catalog().await?;
        if self
            .user
            .role
            .is_some_and(|role| !latest.is_superuser(role))
        {
            return Err(user_error(
                SqlState::INSUFFICIENT_PRIVILEGE,
                format!("must be superuser to {what}"),
            ));
        }
        Ok(latest)
    }

    /// `ALTER NODE n DECOMMISSION`: marks node n as leaving; the Raft
    /// leader's rebalancer moves every chunk off it and then removes it from
    /// the cluster (`quarry_system.nodes` shows it gone). 42501 for a role
    /// that is not a superuser, 42704 for a node that is not a member,
    /// 55000 when the nodes that stay are too few to hold every stripe's
    /// chunks on distinct nodes (its redundancy) or none would stay.
    pub(super) async fn decommission_node(&self, node: u64) -> Result<Output> {
        let latest = self.superuser_catalog("decommission a node").await?;
        let members = self.engine.chunks.nodes();
        if !members.iter().any(|member| member.node_id == node) {
            return Err(user_error(
                SqlState::UNDEFINED_OBJECT,
                format!("node {node} is not a member of the cluster"),
            ));
        }
        let staying = members
            .iter()
            .filter(|m| m.node_id != node && !latest.decommissioning.contains_key(&m.node_id))
            .count();
        let widest = latest
            .stripes
            .values()
            .map(|s| s.chunks.len())
            .max()
            .unwrap_or(0);
        if staying == 0 || staying < widest {
            return Err(user_error(
                SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!(
                    "decommissioning node {node} would leave {staying} node(s), but stripes of \
                     {widest} chunks need {} distinct nodes to keep their redundancy; \
                     add a node first",
                    widest.max(1)
                ),
            ));
        }
        self.engine
            .meta
            .write(Command::Decommission { node })
            .await?;
        Ok(Output::Command(CommandTag::new("ALTER NODE DECOMMISSION")))
    }

    /// `ALTER NODE n DRAIN` / `RESUME`: marks or clears node n's
    /// maintenance in the catalog; the node itself drains (or serves again)
    /// when it sees the mark. 42501 for a role that is not a superuser,
    /// 42704 for a node that is not a member of the cluster, 55000 for a
    /// drain that would leave fewer than a majority of Raft voters alive
    /// and not in maintenance.
    pub(super) async fn alter_node(
        &self,
        node: u64,
        drain_deadline_secs: Option<u32>,
    ) -> Result<Output> {
        let latest = self.superuser_catalog("drain or resume a node").await?;
        let members = self.engine.chunks.nodes();
        if !members.iter().any(|member| member.node_id == node) {
            return Err(user_error(
                SqlState::UNDEFINED_OBJECT,
                format!("node {node} is not a member of the cluster"),
            ));
        }
        if drain_deadline_secs.is_some() && !latest.maintenance.contains_key(&node) {
            // A drained voter stops standing for elections: a majority of
            // voters must stay alive and serving, or no leader could be
            // elected once the current one steps down.
            let voters: Vec<_> = members
                .iter()
                .filter(|m| m.raft_role != "learner")
                .collect();
            let serving = voters
                .iter()
                .filter(|m| {
                    m.node_id != node
                        && m.state == "alive"
                        && !latest.maintenance.contains_key(&m.node_id)
                })
                .count();
            let majority = voters.len() / 2 + 1;
            if voters.iter().any(|m| m.node_id == node) && serving < majority {
                return Err(user_error(
                    SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!(
                        "draining node {node} would leave {serving} of {} Raft voters alive \
                         and serving; {majority} are needed to elect a leader",
                        voters.len()
                    ),
                ));
            }
        }
        let maintenance = drain_deadline_secs.map(|deadline_secs| Maintenance {
            since: quarry_raft::now_micros(),
            deadline_secs,
        });
        let tag = if maintenance.is_some() {
            "ALTER NODE DRAIN"
        } else {
            "ALTER NODE RESUME"
        };
        self.engine
            .meta
            .write(Command::SetMaintenance { node, maintenance })
            .await?;
        Ok(Output::Command(CommandTag::new(tag)))
    }
}
