//! `CANCEL JOB 'id'`: stops a job on whichever node runs it.

use super::*;

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
}
