//! Faults injected into a running [`Cluster`] on a schedule: every
//! `interval`, one fault of the enabled kinds on random targets, healed half
//! an interval later. Every action is written to the nemesis log as a JSON
//! line `{"time": ns, "action": "...", "detail": "..."}`.

use std::io::Write;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::seq::IndexedRandom;

use crate::cluster::Cluster;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nemesis {
    /// kill -9 of a random node (or of the Raft leader), restarted at heal.
    Kill,
    /// SIGSTOP of a random node (or the leader), SIGCONT at heal.
    Pause,
    /// A network partition: one node isolated, the leader isolated, or a
    /// random majority / minority split; healed by removing the routes.
    Partition,
}

impl FromStr for Nemesis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Nemesis::Kill),
            "pause" => Ok(Nemesis::Pause),
            "partition" => Ok(Nemesis::Partition),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, pause, partition)"
            )),
        }
    }
}

/// Writes nemesis actions as JSON lines.
pub struct NemesisLog {
    out: std::fs::File,
    start: Instant,
}

impl NemesisLog {
    /// A log at `path`, timed from `start`.
    ///
    /// # Errors
    /// If the file cannot be created.
    pub fn create(path: &std::path::Path, start: Instant) -> std::io::Result<NemesisLog> {
        Ok(NemesisLog {
            out: std::fs::File::create(path)?,
            start,
        })
    }

    fn record(&mut self, action: &str, detail: &str) {
        let line = serde_json::json!({
            "time": self.start.elapsed().as_nanos() as u64,
            "action": action,
            "detail": detail,
        });
        let _ = writeln!(self.out, "{line}");
        tracing::info!(action, detail, "nemesis");
    }
}

/// Runs faults until `until`, then heals everything.
///
/// # Errors
/// If a fault cannot be applied or healed (a node does not restart, a route
/// cannot be changed).
pub async fn run(
    cluster: &mut Cluster,
    kinds: &[Nemesis],
    interval: Duration,
    until: Instant,
    log: &mut NemesisLog,
) -> anyhow::Result<()> {
    if kinds.is_empty() {
        tokio::time::sleep_until(until.into()).await;
        return Ok(());
    }
    let n = cluster.nodes.len();
    loop {
        tokio::time::sleep(interval / 2).await;
        if Instant::now() + interval / 2 >= until {
            break;
        }
        let kind = *kinds.choose(&mut rand::rng()).expect("kinds is not empty");
        let at_leader = rand::rng().random_bool(0.5);
        let target = match (at_leader, cluster.leader().await) {
            (true, Some(leader)) => leader,
            _ => rand::rng().random_range(0..n),
        };
        let who = if at_leader { "the leader" } else { "a node" };
        match kind {
            Nemesis::Kill => {
                cluster.nodes[target].kill9();
                log.record("kill", &format!("{who}: node {}", target + 1));
            }
            Nemesis::Pause => {
                cluster.nodes[target].pause();
                log.record("pause", &format!("{who}: node {}", target + 1));
            }
            Nemesis::Partition => {
                let side: Vec<usize> = if rand::rng().random_bool(0.5) {
                    vec![target]
                } else {
                    // A random minority of at most (n - 1) / 2 nodes.
                    let mut all: Vec<usize> = (0..n).collect();
                    let size = rand::rng().random_range(1..=((n - 1) / 2).max(1));
                    let (chosen, _) = rand::seq::SliceRandom::partial_shuffle(
                        all.as_mut_slice(),
                        &mut rand::rng(),
                        size,
                    );
                    chosen.to_vec()
                };
                cluster.lan().partition(&side)?;
                let named: Vec<String> = side.iter().map(|i| (i + 1).to_string()).collect();
                log.record(
                    "partition",
                    &format!("nodes {} cut off from the rest", named.join(",")),
                );
            }
        }
        tokio::time::sleep(interval / 2).await;
        cluster.heal_all()?;
        log.record("heal", "all nodes running, network whole");
    }
    cluster.heal_all()?;
    log.record("heal", "end of the fault schedule");
    Ok(())
}
