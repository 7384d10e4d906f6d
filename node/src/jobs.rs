//! This node's jobs and client connections ([`quarry_exec::jobs`]), and the
//! cluster's through the internal RPC.
//!
//! Running jobs and connected backends live in memory. An ended job's record
//! is written to `<data_dir>/jobs.redb` (postcard, keyed by the job's
//! creation time) by a writer task that commits what ended in the last
//! [`FLUSH_INTERVAL`] in one transaction, so a statement never waits for the
//! history; a node killed with `kill -9` may lose the records of that last
//! interval. Records older than the history window (`--job-history-days`,
//! default 30) are deleted at start and every hour.
//!
//! Job ids are `<node>-<key in hex>`, so a cancel by id goes to the node that
//! runs the job; process ids carry the node id in their top 9 bits (node ids
//! 1 to 511 give distinct pids), so `pg_cancel_backend(pid)` asks every node
//! and only the one that holds the pid acts.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgwire::api::{ClientInfo, PidSecretKeyGenerator, RandomPidSecretKeyGenerator};
use pgwire::messages::startup::SecretKey;
use quarry_common::SqlState;
use quarry_common::catalog::NodeId;
use quarry_exec::error::user_error;
use quarry_exec::jobs::{Backend, JobRecord, JobSource, JobState, Measured, Viewer};
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::rpc::{RpcRequest, RpcResponse, Transport};
use crate::stripes::ClusterView;
use quarry_storage::ChunkTransport;

/// Ended jobs by key (creation µs << 20 | sequence), postcard records.
const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
/// How often ended jobs are written to disk.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// How long a job-listing call may take per node.
const CALL_DEADLINE: Duration = Duration::from_secs(5);

/// Stops whatever a backend or job is running.
pub type Canceller = Arc<dyn Fn() + Send + Sync>;

struct RunningJob {
    record: JobRecord,
    cancel: Canceller,
    /// What the engine measured so far, once the statement is planned.
    stats: Option<Arc<quarry_exec::jobs::StatementStats>>,
    /// Rows sent so far, counted by the job's handle without the lock.
    rows: Arc<AtomicU64>,
}

impl RunningJob {
    /// The record with the statistics measured so far (bytes processed are
    /// known once the statement is planned).
    fn now(&self) -> JobRecord {
        let mut record = self.record.clone();
        if let Some(stats) = &self.stats {
            record.measured(stats.measured());
        }
        record.rows = self.rows.load(Ordering::Relaxed);
        record
    }
}

struct Connected {
    backend: Backend,
    cancel: Canceller,
}

/// This node's jobs and backends.
pub struct Jobs {
    node: NodeId,
    db: redb::Database,
    window: Duration,
    sequence: AtomicU64,
    pids: AtomicI32,
    running: Mutex<HashMap<String, RunningJob>>,
    /// Ended, not yet on disk.
    unflushed: Mutex<Vec<JobRecord>>,
    flush: tokio::sync::Notify,
    backends: Mutex<HashMap<i32, Connected>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_micros() -> i64 {
    quarry_raft::now_micros()
}

/// What a new job is.
pub struct JobStart {
    /// The backend running it (0: the HTTP API).
    pub pid: i32,
    /// Its role.
    pub user: String,
    /// `pgwire` or `http`.
    pub client: &'static str,
    /// Its text.
    pub query: String,
    /// Its type and the table it writes.
    pub kind: (String, Option<String>),
}

impl Jobs {
    /// Opens (creating) the job history of node `node` at `path`, keeping
    /// `window` of it.
    ///
    /// # Errors
    /// If the file cannot be opened.
    pub fn open(node: NodeId, path: &Path, window: Duration) -> anyhow::Result<Arc<Jobs>> {
        let db = redb::Database::create(path)
            .map_err(|e| anyhow::anyhow!("cannot open the job history {}: {e}", path.display()))?;
        let jobs = Arc::new(Jobs {
            node,
            db,
            window,
            sequence: AtomicU64::new(0),
            pids: AtomicI32::new(1),
            running: Mutex::default(),
            unflushed: Mutex::default(),
            flush: tokio::sync::Notify::new(),
            backends: Mutex::default(),
        });
        jobs.prune()?;
        Ok(jobs)
    }

    /// Writes ended jobs every [`FLUSH_INTERVAL`] and prunes the history
    /// every hour, until the node stops.
    pub async fn keep(self: Arc<Self>) {
        let mut last_prune = std::time::Instant::now();
        loop {
            tokio::select! {
                () = self.flush.notified() => tokio::time::sleep(FLUSH_INTERVAL).await,
                () = tokio::time::sleep(FLUSH_INTERVAL) => {}
            }
            let jobs = self.clone();
            let prune = last_prune.elapsed() > Duration::from_secs(3600);
            if prune {
                last_prune = std::time::Instant::now();
            }
            let done = tokio::task::spawn_blocking(move || {
                jobs.write_ended()?;
                if prune {
                    jobs.prune()?;
                }
                anyhow::Ok(())
            })
            .await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "cannot write the job history");
            }
        }
    }

    /// Writes the ended jobs not on disk yet (also at shutdown).
    ///
    /// # Errors
    /// If the history cannot be written.
    pub fn write_ended(&self) -> anyhow::Result<()> {
        let ended: Vec<JobRecord> = lock(&self.unflushed).clone();
        if ended.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(JOBS)?;
            for record in &ended {
                let Some(key) = key_of(&record.job_id) else {
                    continue;
                };
                table.insert(key, postcard::to_allocvec(record)?.as_slice())?;
            }
        }
        txn.commit()?;
        lock(&self.unflushed).drain(..ended.len());
        Ok(())
    }

    fn prune(&self) -> anyhow::Result<()> {
        let oldest = now_micros().saturating_sub(self.window.as_micros() as i64);
        let end = (oldest.max(0) as u128) << 20;
        let txn = self.db.begin_write()?;
        {
            let mut table = txn.open_table(JOBS)?;
            table.retain_in(..end, |_, _| false)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The process id and cancel key of a new connection.
    pub fn new_pid(&self, client: &dyn ClientInfo) -> (i32, SecretKey) {
        let (_, secret) = RandomPidSecretKeyGenerator::default().generate(client);
        let sequence = self.pids.fetch_add(1, Ordering::Relaxed) & 0x003F_FFFF;
        let pid = (((self.node & 0x1FF) as i32) << 22) | sequence;
        (pid, secret)
    }

    /// Records a connected backend until the guard is dropped.
    pub fn connect(self: &Arc<Self>, backend: Backend, cancel: Canceller) -> BackendGuard {
        let pid = backend.pid;
        lock(&self.backends).insert(pid, Connected { backend, cancel });
        BackendGuard {
            jobs: self.clone(),
            pid,
        }
    }

    /// Starts a job (PENDING until [`JobHandle::started`]).
    pub fn begin(self: &Arc<Self>, start: JobStart, cancel: Canceller) -> JobHandle {
        let creation = now_micros();
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) & 0xF_FFFF;
        let key = ((creation.max(0) as u128) << 20) | u128::from(sequence);
        let job_id = format!("{}-{key:x}", self.node);
        let query = quarry_exec::jobs::redact_passwords(&start.query);
        let record = JobRecord {
            job_id: job_id.clone(),
            node: self.node,
            pid: start.pid,
            user: start.user,
            client: start.client.to_owned(),
            statement_type: start.kind.0,
            query: query.clone(),
            state: JobState::Pending,
            creation_micros: creation,
            start_micros: None,
            end_micros: None,
            total_bytes_processed: 0,
            rows: 0,
            total_slot_ms: 0,
            peak_memory_bytes: 0,
            spilled_bytes: 0,
            cache_hit: false,
            error_sqlstate: None,
            error_message: None,
            referenced_tables: Vec::new(),
            destination_table: start.kind.1,
        };
        let rows = Arc::new(AtomicU64::new(0));
        lock(&self.running).insert(
            job_id.clone(),
            RunningJob {
                record,
                cancel,
                stats: None,
                rows: rows.clone(),
            },
        );
        if let Some(connected) = lock(&self.backends).get_mut(&start.pid) {
            let backend = &mut connected.backend;
            backend.state = "active".to_owned();
            backend.query = query;
            backend.query_start_micros = Some(creation);
            backend.state_change_micros = Some(creation);
            backend.job_id = Some(job_id.clone());
            backend.waiting = true;
        }
        metrics::counter!("quarry_jobs_total").increment(1);
        JobHandle {
            jobs: self.clone(),
            job_id,
            pid: start.pid,
            ended: false,
            in_transaction: false,
            stats: None,
            rows,
        }
    }

    fn update(&self, job_id: &str, change: impl FnOnce(&mut JobRecord)) {
        if let Some(job) = lock(&self.running).get_mut(job_id) {
            change(&mut job.record);
        }
    }

    fn end(
        &self,
        job_id: &str,
        pid: i32,
        in_transaction: bool,
        change: impl FnOnce(&mut JobRecord),
    ) {
        let Some(mut job) = lock(&self.running).remove(job_id) else {
            return;
        };
        job.record.rows = job.rows.load(Ordering::Relaxed);
        change(&mut job.record);
        job.record.state = JobState::Done;
        let end = now_micros();
        job.record.end_micros = Some(end);
        job.record.start_micros.get_or_insert(end);
        if let Some(connected) = lock(&self.backends).get_mut(&pid)
            && connected.backend.job_id.as_deref() == Some(job_id)
        {
            let backend = &mut connected.backend;
            backend.state = if in_transaction {
                "idle in transaction"
            } else {
                "idle"
            }
            .to_owned();
            backend.state_change_micros = Some(end);
            backend.job_id = None;
            backend.waiting = false;
        }
        lock(&self.unflushed).push(job.record);
        self.flush.notify_one();
    }

    /// This node's jobs created since `since_micros` that `viewer` may see:
    /// running, ended and not yet written, and written.
    ///
    /// # Errors
    /// If the history cannot be read.
    pub fn local_jobs(&self, since_micros: i64, viewer: &Viewer) -> anyhow::Result<Vec<JobRecord>> {
        let visible = |r: &JobRecord| {
            r.creation_micros >= since_micros && viewer.as_ref().is_none_or(|v| *v == r.user)
        };
        let mut jobs: HashMap<String, JobRecord> = HashMap::new();
        let txn = self.db.begin_read()?;
        match txn.open_table(JOBS) {
            Ok(table) => {
                let start = (since_micros.max(0) as u128) << 20;
                for entry in table.range(start..)? {
                    let (_, value) = entry?;
                    let record: JobRecord = postcard::from_bytes(value.value())?;
                    if visible(&record) {
                        jobs.insert(record.job_id.clone(), record);
                    }
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        for record in lock(&self.unflushed).iter().filter(|r| visible(r)) {
            jobs.insert(record.job_id.clone(), record.clone());
        }
        for job in lock(&self.running).values().filter(|j| visible(&j.record)) {
            jobs.insert(job.record.job_id.clone(), job.now());
        }
        Ok(jobs.into_values().collect())
    }

    /// One of this node's jobs, for `viewer`.
    ///
    /// # Errors
    /// If the history cannot be read.
    pub fn local_job(&self, job_id: &str, viewer: &Viewer) -> anyhow::Result<Option<JobRecord>> {
        let visible = |r: &JobRecord| viewer.as_ref().is_none_or(|v| *v == r.user);
        if let Some(job) = lock(&self.running).get(job_id) {
            return Ok(visible(&job.record).then(|| job.now()));
        }
        if let Some(r) = lock(&self.unflushed).iter().find(|r| r.job_id == job_id) {
            return Ok(visible(r).then(|| r.clone()));
        }
        let Some(key) = key_of(job_id) else {
            return Ok(None);
        };
        let txn = self.db.begin_read()?;
        let table = match txn.open_table(JOBS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Some(value) = table.get(key)? else {
            return Ok(None);
        };
        let record: JobRecord = postcard::from_bytes(value.value())?;
        Ok(visible(&record).then_some(record))
    }

    /// This node's backends.
    pub fn local_backends(&self) -> Vec<Backend> {
        let mut backends: Vec<Backend> = lock(&self.backends)
            .values()
            .map(|c| c.backend.clone())
            .collect();
        let running = lock(&self.running);
        for backend in &mut backends {
            if let Some(job) = backend.job_id.as_ref().and_then(|id| running.get(id)) {
                backend.waiting = job.record.state == JobState::Pending;
            }
        }
        backends
    }

    /// Cancels what backend `pid` runs, if it is this node's.
    ///
    /// # Errors
    /// 42501 if `viewer` may not.
    pub fn cancel_local_backend(&self, pid: i32, viewer: &Viewer) -> quarry_exec::Result<bool> {
        let backends = lock(&self.backends);
        let Some(connected) = backends.get(&pid) else {
            return Ok(false);
        };
        may_cancel(viewer, &connected.backend.user)?;
        if connected.backend.job_id.is_none() {
            return Ok(false);
        }
        (connected.cancel)();
        Ok(true)
    }

    /// Cancels job `job_id` if it runs here: None when this node does not
    /// know it, Some(false) when it has ended.
    ///
    /// # Errors
    /// 42501 if `viewer` may not.
    pub fn cancel_local_job(
        &self,
        job_id: &str,
        viewer: &Viewer,
    ) -> quarry_exec::Result<Option<bool>> {
        if let Some(job) = lock(&self.running).get(job_id) {
            may_cancel(viewer, &job.record.user)?;
            (job.cancel)();
            return Ok(Some(true));
        }
        match self.local_job(job_id, &None) {
            Ok(Some(record)) => {
                may_cancel(viewer, &record.user)?;
                Ok(Some(false))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(quarry_exec::Error::Internal(format!(
                "cannot read the job history: {e}"
            ))),
        }
    }
}

fn may_cancel(viewer: &Viewer, owner: &str) -> quarry_exec::Result<()> {
    match viewer {
        Some(user) if user != owner => Err(user_error(
            SqlState::INSUFFICIENT_PRIVILEGE,
            format!("permission denied to cancel a statement of role \"{owner}\""),
        )),
        _ => Ok(()),
    }
}

/// The record key in a job id (`<node>-<hex key>`).
fn key_of(job_id: &str) -> Option<u128> {
    let (_, key) = job_id.split_once('-')?;
    u128::from_str_radix(key, 16).ok()
}

/// The node in a job id.
fn node_of(job_id: &str) -> Option<NodeId> {
    job_id.split_once('-')?.0.parse().ok()
}

/// Removes a backend when its connection ends.
pub struct BackendGuard {
    jobs: Arc<Jobs>,
    pid: i32,
}

impl Drop for BackendGuard {
    fn drop(&mut self) {
        lock(&self.jobs.backends).remove(&self.pid);
    }
}

/// A running job; dropping it before [`JobHandle::finish`] ends it as
/// cancelled (its rows were not all taken).
pub struct JobHandle {
    jobs: Arc<Jobs>,
    job_id: String,
    pid: i32,
    ended: bool,
    in_transaction: bool,
    stats: Option<Arc<quarry_exec::jobs::StatementStats>>,
    rows: Arc<AtomicU64>,
}

impl JobHandle {
    /// What the engine measures of the statement, for an end by drop.
    pub fn measure(&mut self, stats: Arc<quarry_exec::jobs::StatementStats>) {
        if let Some(job) = lock(&self.jobs.running).get_mut(&self.job_id) {
            job.stats = Some(stats.clone());
        }
        self.stats = Some(stats);
    }

    /// The job's id.
    pub fn id(&self) -> &str {
        &self.job_id
    }

    /// It has its query slot and runs.
    pub fn started(&self) {
        let now = now_micros();
        self.jobs.update(&self.job_id, |r| {
            r.state = JobState::Running;
            r.start_micros = Some(now);
        });
        if let Some(connected) = lock(&self.jobs.backends).get_mut(&self.pid) {
            connected.backend.waiting = false;
        }
    }

    /// `rows` more rows were returned (or changed).
    pub fn rows(&self, rows: u64) {
        self.rows.fetch_add(rows, Ordering::Relaxed);
    }

    /// Whether the session is in a transaction block after the statement.
    pub fn set_in_transaction(&mut self, open: bool) {
        self.in_transaction = open;
    }

    /// Ends the job with what the engine measured of it (nothing if it did
    /// not start) and, if it failed, its error.
    pub fn end(self, rows: Option<u64>, error: Option<(String, String)>) {
        let measured = self
            .stats
            .as_ref()
            .map(|s| s.measured())
            .unwrap_or_default();
        self.finish(measured, rows, error);
    }

    /// Ends the job with its statistics and, if it failed, its error.
    pub fn finish(
        mut self,
        measured: Measured,
        rows: Option<u64>,
        error: Option<(String, String)>,
    ) {
        self.ended = true;
        self.jobs
            .end(&self.job_id, self.pid, self.in_transaction, |r| {
                r.measured(measured);
                if let Some(rows) = rows {
                    r.rows = rows;
                }
                if let Some((sqlstate, message)) = error {
                    r.error_sqlstate = Some(sqlstate);
                    r.error_message = Some(message);
                }
            });
    }
}

impl Drop for JobHandle {
    fn drop(&mut self) {
        if !self.ended {
            let measured = self.stats.as_ref().map(|s| s.measured());
            self.jobs
                .end(&self.job_id, self.pid, self.in_transaction, |r| {
                    if let Some(measured) = measured {
                        r.measured(measured);
                    }
                    r.error_sqlstate = Some(SqlState::QUERY_CANCELED.code().to_owned());
                    r.error_message =
                        Some("the statement ended before its rows were all sent".to_owned());
                });
        }
    }
}

/// The job requests between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JobRequest {
    /// The node's jobs created since `since_micros`, for `viewer`.
    List {
        /// Oldest creation time, µs.
        since_micros: i64,
        /// Who asks.
        viewer: Viewer,
    },
    /// One job of the node.
    Get {
        /// Its id.
        job_id: String,
        /// Who asks.
        viewer: Viewer,
    },
    /// The node's backends.
    Backends,
    /// Cancel the statement of backend `pid`, if it is the node's.
    CancelBackend {
        /// The backend.
        pid: i32,
        /// Who asks.
        viewer: Viewer,
    },
    /// Cancel job `job_id`.
    CancelJob {
        /// The job.
        job_id: String,
        /// Who asks.
        viewer: Viewer,
    },
}

/// A node's answer to a [`JobRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JobResponse {
    /// Answer to `List` and `Get`.
    Jobs(Vec<JobRecord>),
    /// Answer to `Backends`.
    Backends(Vec<Backend>),
    /// Answer to the cancels: None, the node does not know the job; else
    /// whether something was cancelled.
    Cancelled(Option<bool>),
    /// The request failed: SQLSTATE and message.
    Failed(String, String),
}

impl Jobs {
    /// Answers `request` for this node.
    pub fn answer(&self, request: JobRequest) -> JobResponse {
        let failed = |e: quarry_exec::Error| {
            JobResponse::Failed(e.sqlstate().code().to_owned(), e.to_string())
        };
        let internal = |e: anyhow::Error| {
            JobResponse::Failed(SqlState::INTERNAL_ERROR.code().to_owned(), e.to_string())
        };
        match request {
            JobRequest::List {
                since_micros,
                viewer,
            } => match self.local_jobs(since_micros, &viewer) {
                Ok(jobs) => JobResponse::Jobs(jobs),
                Err(e) => internal(e),
            },
            JobRequest::Get { job_id, viewer } => match self.local_job(&job_id, &viewer) {
                Ok(job) => JobResponse::Jobs(job.into_iter().collect()),
                Err(e) => internal(e),
            },
            JobRequest::Backends => JobResponse::Backends(self.local_backends()),
            JobRequest::CancelBackend { pid, viewer } => {
                match self.cancel_local_backend(pid, &viewer) {
                    Ok(done) => JobResponse::Cancelled(Some(done)),
                    Err(e) => failed(e),
                }
            }
            JobRequest::CancelJob { job_id, viewer } => {
                match self.cancel_local_job(&job_id, &viewer) {
                    Ok(done) => JobResponse::Cancelled(done),
                    Err(e) => failed(e),
                }
            }
        }
    }
}

/// The cluster's jobs: this node's, and the other live nodes' over RPC.
pub struct ClusterJobs {
    local: Arc<Jobs>,
    view: Arc<ClusterView>,
    transport: Arc<dyn Transport>,
}

impl std::fmt::Debug for ClusterJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterJobs").finish_non_exhaustive()
    }
}

impl ClusterJobs {
    /// The jobs of the cluster `view` sees, this node's from `local`.
    pub fn new(local: Arc<Jobs>, view: Arc<ClusterView>, transport: Arc<dyn Transport>) -> Self {
        ClusterJobs {
            local,
            view,
            transport,
        }
    }

    /// This node's jobs.
    pub fn local(&self) -> &Arc<Jobs> {
        &self.local
    }

    async fn ask(&self, node: NodeId, request: JobRequest) -> quarry_exec::Result<JobResponse> {
        let response = if node == self.local.node {
            self.local.answer(request)
        } else {
            let addr = self.view.addr_of(node).ok_or_else(|| {
                quarry_exec::Error::Meta(quarry_raft::Error::Unavailable(format!(
                    "node {node} has no address"
                )))
            })?;
            match self
                .transport
                .call(addr, RpcRequest::Jobs(request), CALL_DEADLINE)
                .await
            {
                Ok(RpcResponse::Jobs(response)) => response,
                Ok(other) => {
                    return Err(quarry_exec::Error::Internal(format!(
                        "node {node} answered a job request with {other:?}"
                    )));
                }
                Err(e) => {
                    return Err(quarry_exec::Error::Meta(quarry_raft::Error::Unavailable(
                        format!("node {node}: {e}"),
                    )));
                }
            }
        };
        match response {
            JobResponse::Failed(sqlstate, message) => {
                Err(user_error(SqlState::from_code(&sqlstate), message))
            }
            other => Ok(other),
        }
    }

    /// Asks every live node; a node that does not answer is left out (it
    /// is down or cut off: its jobs show again when it is back).
    async fn ask_all(&self, request: JobRequest) -> Vec<quarry_exec::Result<JobResponse>> {
        let mut nodes: Vec<NodeId> = self
            .view
            .live_nodes()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        if !nodes.contains(&self.local.node) {
            nodes.push(self.local.node);
        }
        futures::future::join_all(nodes.into_iter().map(|node| {
            let request = request.clone();
            async move {
                let answer = self.ask(node, request).await;
                if let Err(e) = &answer {
                    tracing::info!(node, error = %e, "a node's jobs are left out");
                }
                answer
            }
        }))
        .await
    }

    /// Job `job_id`, from the node that ran it.
    ///
    /// # Errors
    /// If that node cannot be asked.
    pub async fn job(
        &self,
        job_id: &str,
        viewer: &Viewer,
    ) -> quarry_exec::Result<Option<JobRecord>> {
        let Some(node) = node_of(job_id) else {
            return Ok(None);
        };
        let request = JobRequest::Get {
            job_id: job_id.to_owned(),
            viewer: viewer.clone(),
        };
        match self.ask(node, request).await? {
            JobResponse::Jobs(mut jobs) => Ok(jobs.pop()),
            _ => Ok(None),
        }
    }
}

#[async_trait]
impl JobSource for ClusterJobs {
    async fn jobs(
        &self,
        since_micros: i64,
        viewer: &Viewer,
    ) -> quarry_exec::Result<Vec<JobRecord>> {
        let request = JobRequest::List {
            since_micros,
            viewer: viewer.clone(),
        };
        let mut jobs = Vec::new();
        for answer in self.ask_all(request).await {
            if let Ok(JobResponse::Jobs(some)) = answer {
                jobs.extend(some);
            }
        }
        Ok(jobs)
    }

    async fn backends(&self) -> quarry_exec::Result<Vec<Backend>> {
        let mut backends = Vec::new();
        for answer in self.ask_all(JobRequest::Backends).await {
            if let Ok(JobResponse::Backends(some)) = answer {
                backends.extend(some);
            }
        }
        Ok(backends)
    }

    async fn cancel_backend(&self, pid: i32, viewer: &Viewer) -> quarry_exec::Result<bool> {
        let request = JobRequest::CancelBackend {
            pid,
            viewer: viewer.clone(),
        };
        let mut cancelled = false;
        for answer in self.ask_all(request).await {
            match answer {
                Ok(JobResponse::Cancelled(Some(true))) => cancelled = true,
                Err(e) if e.sqlstate() == SqlState::INSUFFICIENT_PRIVILEGE => return Err(e),
                _ => {}
            }
        }
        Ok(cancelled)
    }

    async fn cancel_job(&self, job_id: &str, viewer: &Viewer) -> quarry_exec::Result<bool> {
        let unknown = || {
            user_error(
                SqlState::UNDEFINED_OBJECT,
                format!("job \"{job_id}\" does not exist"),
            )
        };
        let node = node_of(job_id).ok_or_else(unknown)?;
        if node != self.local.node && self.view.addr_of(node).is_none() {
            // No such node: no such job.
            return Err(unknown());
        }
        let request = JobRequest::CancelJob {
            job_id: job_id.to_owned(),
            viewer: viewer.clone(),
        };
        match self.ask(node, request).await? {
            JobResponse::Cancelled(Some(done)) => Ok(done),
            _ => Err(unknown()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(user: &str, query: &str) -> JobStart {
        JobStart {
            pid: 0,
            user: user.to_owned(),
            client: "http",
            query: query.to_owned(),
            kind: ("SELECT".to_owned(), None),
        }
    }

    #[test]
    fn ended_jobs_are_kept_across_a_reopen_and_pruned_after_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let jobs = Jobs::open(3, &path, Duration::from_secs(3600)).unwrap();
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = cancelled.clone();
        let job = jobs.begin(
            start("alice", "SELECT 1"),
            Arc::new(move || flag.store(true, Ordering::SeqCst)),
        );
        let id = job.id().to_owned();
        assert!(id.starts_with("3-"));
        job.started();
        // Another role may not cancel it; its own role may.
        let bob = Some("bob".to_owned());
        assert!(jobs.cancel_local_job(&id, &bob).is_err());
        assert_eq!(
            jobs.cancel_local_job(&id, &Some("alice".into())).unwrap(),
            Some(true)
        );
        assert!(cancelled.load(Ordering::SeqCst));
        job.finish(
            Measured {
                bytes_processed: 42,
                ..Measured::default()
            },
            Some(1),
            None,
        );
        assert_eq!(jobs.cancel_local_job(&id, &None).unwrap(), Some(false));
        assert!(jobs.local_jobs(0, &bob).unwrap().is_empty());
        jobs.write_ended().unwrap();
        drop(jobs);
        let jobs = Jobs::open(3, &path, Duration::from_secs(3600)).unwrap();
        let kept = jobs.local_jobs(0, &Some("alice".into())).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].total_bytes_processed, 42);
        assert_eq!(kept[0].state, JobState::Done);
        drop(jobs);
        // A window shorter than the job's age prunes it at open.
        std::thread::sleep(Duration::from_millis(5));
        let jobs = Jobs::open(3, &path, Duration::from_millis(1)).unwrap();
        assert!(jobs.local_jobs(0, &None).unwrap().is_empty());
        assert_eq!(jobs.cancel_local_job(&id, &None).unwrap(), None);
    }

    #[test]
    fn a_job_dropped_before_it_finished_is_recorded_as_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(1, &dir.path().join("jobs.redb"), Duration::from_secs(60)).unwrap();
        drop(jobs.begin(start("alice", "SELECT 2"), Arc::new(|| {})));
        let ended = jobs.local_jobs(0, &None).unwrap();
        assert_eq!(ended[0].error_sqlstate.as_deref(), Some("57014"));
    }
}
