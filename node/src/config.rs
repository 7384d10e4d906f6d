//! Node configuration: a TOML file (`--config FILE`) and command-line flags, flags
//! winning. `deploy/quarry.toml.example` lists every key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default PostgreSQL listen address. 5433 rather than PostgreSQL's 5432, so a
/// Quarry node can run beside a PostgreSQL server on the same machine.
pub const DEFAULT_PG_LISTEN: &str = "127.0.0.1:5433";
/// Default HTTP listen address (health, metrics).
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8433";
/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "quarry-data";

/// Keys of the TOML config file; all optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Directory for all of the node's state (metadata, chunks).
    pub data_dir: Option<PathBuf>,
    /// HOST:PORT for PostgreSQL clients.
    pub pg_listen: Option<SocketAddr>,
    /// HOST:PORT for HTTP (`/health`, `/metrics`).
    pub http_listen: Option<SocketAddr>,
    /// Parallel partitions per query on this node (default: number of CPUs).
    pub target_partitions: Option<usize>,
    /// Seconds to wait for running statements at shutdown before closing their
    /// connections (default 10).
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds between runs of the snapshot retention collector (default 60).
    pub retention_check_secs: Option<u64>,
}

/// The node's effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory for all of the node's state.
    pub data_dir: PathBuf,
    /// PostgreSQL listen address.
    pub pg_listen: SocketAddr,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Parallel partitions per query.
    pub target_partitions: usize,
    /// How long shutdown waits for running statements.
    pub shutdown_grace: Duration,
    /// How often expired snapshots are collected.
    pub retention_check: Duration,
}

/// Errors reading the configuration (the operator's to fix).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`FileConfig`].
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
}

impl FileConfig {
    /// Reads `path`.
    ///
    /// # Errors
    /// [`ConfigError`] if it cannot be read or parsed (unknown keys are errors).
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// This file's values with `flags` on top, and defaults for what neither sets.
    pub fn merge(self, flags: FileConfig) -> Config {
        let parse = |s: &str| s.parse().expect("default addresses are valid");
        Config {
            data_dir: flags
                .data_dir
                .or(self.data_dir)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            pg_listen: flags
                .pg_listen
                .or(self.pg_listen)
                .unwrap_or_else(|| parse(DEFAULT_PG_LISTEN)),
            http_listen: flags
                .http_listen
                .or(self.http_listen)
                .unwrap_or_else(|| parse(DEFAULT_HTTP_LISTEN)),
            target_partitions: flags
                .target_partitions
                .or(self.target_partitions)
                .unwrap_or_else(|| {
                    std::thread::available_parallelism()
                        .map(|n| n.get())
                        .unwrap_or(1)
                }),
            shutdown_grace: Duration::from_secs(
                flags
                    .shutdown_grace_secs
                    .or(self.shutdown_grace_secs)
                    .unwrap_or(10),
            ),
            retention_check: Duration::from_secs(
                flags
                    .retention_check_secs
                    .or(self.retention_check_secs)
                    .unwrap_or(60)
                    .max(1),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let file: FileConfig = toml::from_str(
            r#"
            data_dir = "/var/lib/quarry"
            pg_listen = "0.0.0.0:6000"
            "#,
        )
        .expect("valid toml");
        let flags = FileConfig {
            pg_listen: Some("127.0.0.1:7000".parse().expect("addr")),
            ..Default::default()
        };
        let config = file.merge(flags);
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/quarry"));
        assert_eq!(config.pg_listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.http_listen.to_string(), DEFAULT_HTTP_LISTEN);
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let result: Result<FileConfig, _> = toml::from_str("pg_port = 5");
        assert!(result.is_err());
    }
}
