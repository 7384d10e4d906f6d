//! `quarry-jepsen`: runs a workload against a cluster of real `quarry` nodes in
//! network namespaces under faults, and judges the history. Needs root.
//!
//! ```text
//! quarry-jepsen test --workload bank --nemesis partition,kill --time 60s
//! ```
//! Writes `history.jsonl`, `nemesis.jsonl`, the node logs and `results.json`
//! to `--dir`; exits 1 when the checker finds an anomaly.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use quarry_jepsen::nemesis::Nemesis;
use quarry_jepsen::runner::{Settings, Workload, run};

#[derive(Parser)]
#[command(name = "quarry-jepsen", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one test.
    Test {
        /// set, bank, register, append or stream.
        #[arg(long)]
        workload: Workload,
        /// Faults, comma-separated: kill, pause, partition (none if absent).
        #[arg(long, value_delimiter = ',')]
        nemesis: Vec<Nemesis>,
        /// How long the clients run (e.g. 60s, 5m).
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        time: Duration,
        /// Time between two faults.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Number of nodes.
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 10)]
        clients: usize,
        /// Directory for this run's files [default: jepsen-runs/<workload>-<time>].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The quarry binary [default: next to this one].
        #[arg(long)]
        quarry: Option<PathBuf>,
        /// Deadline of one client operation.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        op_timeout: Duration,
    },
    /// Judge a stored history again (a run's history.jsonl).
    Check {
        /// The workload that made it.
        #[arg(long)]
        workload: Workload,
        /// The history file.
        #[arg(long)]
        history: PathBuf,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let (workload, nemesis, time, interval, nodes, clients, dir, quarry, op_timeout) =
        match Cli::parse().command {
            Command::Test {
                workload,
                nemesis,
                time,
                interval,
                nodes,
                clients,
                dir,
                quarry,
                op_timeout,
            } => (
                workload, nemesis, time, interval, nodes, clients, dir, quarry, op_timeout,
            ),
            Command::Check { workload, history } => return check(workload, &history),
        };
    let quarry = match quarry {
        Some(path) => path,
        None => match std::env::current_exe() {
            Ok(exe) => quarry_jepsen::runner::quarry_beside(&exe),
            Err(e) => {
                eprintln!("error: cannot find this executable: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let dir = dir.unwrap_or_else(|| {
        PathBuf::from("jepsen-runs").join(format!(
            "{}-{}",
            format!("{workload:?}").to_lowercase(),
            chrono_free_stamp()
        ))
    });
    let settings = Settings {
        quarry,
        nodes,
        workload,
        nemeses: nemesis,
        time,
        interval,
        clients,
        dir: dir.clone(),
        op_timeout,
    };
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&settings) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; every node was stopped")),
        }
    });
    match outcome {
        Ok(outcome) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&outcome.summary).expect("json")
            );
            println!("files in {}", dir.display());
            if outcome.valid {
                ExitCode::SUCCESS
            } else {
                eprintln!("ANOMALY: see results.json");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Seconds since the Unix epoch, for run directory names.
fn chrono_free_stamp() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check(workload: Workload, path: &std::path::Path) -> ExitCode {
    let history = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| quarry_jepsen::history::parse_json_lines(&text))
    {
        Ok(history) => history,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let (valid, findings) = quarry_jepsen::runner::judge(workload, &history);
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({"valid": valid, "checker": findings}))
            .expect("json")
    );
    if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
