//! The `quarry` binary's library: node supervisor, configuration, PostgreSQL wire
//! front end and HTTP.
//!
//! Layering: the top of the stack. Only this crate builds runtimes, opens sockets,
//! spawns actors (ractor) and owns processes; it wires `quarry-raft` (metadata),
//! `quarry-storage` (chunks) and `quarry-exec` (sessions, fragments) together.
//!
//! ```text
//!  psql ──pgwire──► pg::Connection ──► exec::Session ──► raft::Meta (catalog, commits)
//!                                            └──────────► storage::ChunkStore (data files)
//!  node ──RPC────► rpc ──► query_manager ──► fragment actors (distributed queries)
//!  curl ──HTTP───► http (/health, /ready, /metrics)
//! ```
#![deny(missing_docs)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod data_dir;
pub mod drain;
pub mod fragment;
pub mod gauges;
pub mod http;
pub mod jobs;
pub mod load_files;
pub mod membership;
pub mod peers;
pub mod pg;
pub mod query_api;
pub mod query_manager;
pub mod raft_network;
pub mod rebalance;
pub mod rpc;
pub mod server;
pub mod service;
pub mod stream_api;
pub mod stripes;
pub mod subscription;
pub mod tls;
