//! systemd's service protocol (`sd_notify(3)`,
//! <https://www.freedesktop.org/software/systemd/man/sd_notify.html>) for a
//! unit of `Type=notify`: `READY=1` once the node has joined its cluster,
//! opened its stores and bound its ports; `STOPPING=1` when it starts to
//! shut down; and, when the unit sets `WatchdogSec`, `WATCHDOG=1` every half
//! period while the node is really alive — its Raft core still running and
//! its query manager (the actor supervising fragments) answering — so a node
//! that hangs is restarted by systemd. Without `NOTIFY_SOCKET` (not under
//! systemd) nothing is sent.

use std::time::Duration;

use quarry_raft::Meta;
use ractor::ActorRef;
use sd_notify::NotifyState;

use crate::query_manager::QueryManagerMsg;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The node serves: `READY=1`, with `status` shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// What `systemctl status` shows for the node (`STATUS=`).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The node shuts down: `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// Whether the node is alive: the Raft core runs and the query manager
/// answers within `within`.
async fn alive(meta: &Meta, queries: &ActorRef<QueryManagerMsg>, within: Duration) -> bool {
    if meta.raft().metrics().borrow().running_state.is_err() {
        return false;
    }
    let answer = ractor::call_t!(
        queries,
        |reply| QueryManagerMsg::CountFragments { reply },
        within.as_millis() as u64
    );
    answer.is_ok()
}

/// Feeds systemd's watchdog while the node is alive, until the task is
/// dropped; returns at once when the unit has no watchdog.
pub async fn watchdog(meta: std::sync::Arc<Meta>, queries: ActorRef<QueryManagerMsg>) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = period / 2;
    loop {
        if alive(&meta, &queries, every / 2).await {
            send(&[NotifyState::Watchdog]);
        } else {
            tracing::error!(
                "the node is not alive (Raft core stopped or the query manager does not answer): \
                 the watchdog is not fed"
            );
        }
        tokio::time::sleep(every).await;
    }
}
