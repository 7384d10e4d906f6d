//! `CANCEL JOB 'id'`: stops a job on whichever node runs it. `ALTER NODE n
//! DRAIN | RESUME`: takes a node out of service for maintenance, or back.

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
        // By the newest catalog: this statement pins no snapshot.
        let latest = self.engine.catalog().await?;
        if self
            .user
            .role
            .is_some_and(|role| !latest.is_superuser(role))
        {
            return Err(user_error(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "must be superuser to drain or resume a node",
            ));
        }
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
