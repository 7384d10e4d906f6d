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
    /// A network partition: one node isolated, the leader isolated, a
    /// random majority / minority split, or a bridge (two halves that only
    /// one node between them reaches); healed by removing the routes.
    Partition,
    /// A node's outgoing traffic limited to 64–1024 kbit/s with up to
    /// 500 ms of queueing (tc tbf: netem's delay and loss are not in this
    /// kernel); removed at heal.
    Slow,
    /// A bit flipped in, or the second half cut off, a random data chunk
    /// file of a random node; not undone (the scrubber and degraded reads
    /// must cope).
    Corrupt,
}

impl FromStr for Nemesis {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kill" => Ok(Nemesis::Kill),
            "pause" => Ok(Nemesis::Pause),
            "partition" => Ok(Nemesis::Partition),
            "slow" => Ok(Nemesis::Slow),
            "corrupt" => Ok(Nemesis::Corrupt),
            other => Err(format!(
                "unknown nemesis {other:?} (kill, pause, partition, slow, corrupt)"
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
                let mut order: Vec<usize> = (0..n).collect();
                rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rand::rng());
                let detail = match rand::rng().random_range(0..3) {
                    0 => {
                        cluster.lan().partition(&[target])?;
                        format!("{who}: node {} cut off from the rest", target + 1)
                    }
                    1 => {
                        // A random minority of at most (n - 1) / 2 nodes.
                        let size = rand::rng().random_range(1..=((n - 1) / 2).max(1));
                        let side = &order[..size];
                        cluster.lan().partition(side)?;
                        format!("nodes {} cut off from the rest", names(side))
                    }
                    _ => {
                        // Halves around one bridge node that reaches both.
                        let (left, rest) = order.split_at(n / 2);
                        let (bridge, right) = rest.split_first().expect("n >= 1");
                        let pairs: Vec<(usize, usize)> = left
                            .iter()
                            .flat_map(|a| right.iter().map(move |b| (*a, *b)))
                            .collect();
                        cluster.lan().cut(&pairs)?;
                        format!(
                            "bridge: nodes {} | node {} | nodes {}",
                            names(left),
                            bridge + 1,
                            names(right)
                        )
                    }
                };
                log.record("partition", &detail);
            }
            Nemesis::Slow => {
                let rate = 64 << rand::rng().random_range(0..=4);
                cluster.lan().throttle(target, rate)?;
                log.record(
                    "slow",
                    &format!("{who}: node {} sends at most {rate} kbit/s", target + 1),
                );
            }
            Nemesis::Corrupt => {
                let detail = corrupt_a_chunk(&cluster.nodes[target].data_dir.join("chunks"));
                log.record("corrupt", &format!("{who}: node {}: {detail}", target + 1));
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

/// Flips one bit in, or truncates to half, a random file under `dir`;
/// returns what it did.
fn corrupt_a_chunk(dir: &std::path::Path) -> String {
    fn files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut all = Vec::new();
    files(dir, &mut all);
    let Some(path) = all.choose(&mut rand::rng()).cloned() else {
        return "no chunk to corrupt".to_owned();
    };
    let Ok(mut bytes) = std::fs::read(&path) else {
        return format!("{} vanished", path.display());
    };
    if bytes.is_empty() {
        return format!("{} is empty", path.display());
    }
    let what = if rand::rng().random_bool(0.5) {
        let at = rand::rng().random_range(0..bytes.len());
        bytes[at] ^= 1 << rand::rng().random_range(0..8);
        format!("flipped a bit at byte {at} of {}", path.display())
    } else {
        bytes.truncate(bytes.len() / 2);
        format!("truncated {} to {} bytes", path.display(), bytes.len())
    };
    match std::fs::write(&path, &bytes) {
        Ok(()) => what,
        Err(e) => format!("could not write {}: {e}", path.display()),
    }
}

/// 1-based node numbers, comma-separated.
fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|i| (i + 1).to_string())
        .collect::<Vec<_>>()
        .join(",")
}
