//! State of the fragment actor: starting (its start request not yet
//! answered), then running; and when it checks again whether it is idle.

use std::time::Duration;

use quarry_common::catalog::NodeId;
use quarry_exec::distributed::fragment::Fragment;
use tokio::task::JoinSet;

use super::actor::FragmentArgs;

/// A fragment actor's state.
pub enum FragmentState {
    /// Spawned; it starts the fragment before taking any message.
    Starting(Box<FragmentArgs>),
    /// Started.
    Running(Box<Running>),
    /// It could not start, and is stopping.
    Stopping,
}

/// A started fragment and its fetches.
pub struct Running {
    /// The fragment.
    pub fragment: Fragment,
    /// This node (for reports).
    pub node: NodeId,
    /// How long it may go without a fetch.
    pub idle_max: Duration,
    /// Fetches under way, each its own task (aborted when the actor ends).
    pub fetches: JoinSet<()>,
}

/// When a fragment idle for `idle` (no fetch) checks again, if it may go on
/// at all with `idle_max`: None when it is to stop now.
pub fn next_idle_check(idle: Duration, idle_max: Duration) -> Option<Duration> {
    idle_max.checked_sub(idle).filter(|left| !left.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_checks_again_when_its_idle_time_would_run_out() {
        let minute = Duration::from_secs(60);
        let cases = [
            (Duration::ZERO, Some(minute)),
            (Duration::from_secs(45), Some(Duration::from_secs(15))),
            (minute, None),
            (2 * minute, None),
        ];
        for (idle, expected) in cases {
            assert_eq!(next_idle_check(idle, minute), expected, "idle {idle:?}");
        }
    }
}
