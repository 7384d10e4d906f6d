//! The query manager: the actor that runs this node's fragments of
//! distributed queries (docs/ARCHITECTURE.md §2). Every request
//! about fragments comes to it, from the internal RPC server for other
//! nodes and from [`crate::peers::RpcPeers`] for this node's own queries.
//! It spawns one fragment actor per fragment started here, as its linked
//! child, and routes fetches, filter parts, reports and stops to them.
//!
//! ```text
//!  RPC server ─┐                        ┌─► FragmentActor (query q, stage 1, task 2)
//!  RpcPeers ───┴─Answer─► QueryManager ─┼─► FragmentActor (query q, stage 2, task 2)
//!    (local)                 registry   └─► FragmentActor (query r, ...)
//!                          ◄── ActorTerminated / ActorFailed (supervision)
//! ```
//!
//! The gauge `quarry_fragments_running` counts its fragment actors alive.

mod actor;
mod msg;
mod state;

use std::time::Duration;

use quarry_common::SqlState;
use quarry_exec::distributed::{ExchangeRequest, ExchangeResponse};
use ractor::ActorRef;
use ractor::rpc::CallResult;

pub use actor::{QueryManager, QueryManagerArgs};
pub use msg::QueryManagerMsg;

/// A fragment no consumer has fetched from for this long stops itself (its
/// coordinator is gone): consumers fetch at least every [fetch
/// wait](quarry_exec::distributed::FETCH_WAIT) while a query runs, so only
/// a fragment of a query nobody reads any more goes this long.
pub const FRAGMENT_IDLE_MAX: Duration = Duration::from_secs(600);

/// Asks `manager` to answer `request`, waiting at most `deadline` (None: as
/// long as it takes; every answer comes within the fetch wait or a start).
///
/// A fragment that stopped before answering answers "query canceled"
/// (57014); a manager that has stopped, "shutting down" (57P01).
///
/// # Errors
/// When no answer came within `deadline`.
pub async fn answer(
    manager: &ActorRef<QueryManagerMsg>,
    request: ExchangeRequest,
    deadline: Option<Duration>,
) -> Result<ExchangeResponse, String> {
    let called = manager
        .call(|reply| QueryManagerMsg::Answer { request, reply }, deadline)
        .await;
    match called {
        Ok(CallResult::Success(answer)) => Ok(answer),
        Ok(CallResult::Timeout) => Err(format!(
            "this node's query manager gave no answer within {deadline:?}"
        )),
        Ok(CallResult::SenderError) => Ok(ExchangeResponse::Failed {
            sqlstate: SqlState::QUERY_CANCELED.code().to_owned(),
            message: "the fragment stopped before it answered (the query ended)".to_owned(),
        }),
        Err(_) => Ok(shutting_down()),
    }
}

/// The answer to a request about fragments when the node is shutting down.
pub fn shutting_down() -> ExchangeResponse {
    ExchangeResponse::Failed {
        sqlstate: SqlState::ADMIN_SHUTDOWN.code().to_owned(),
        message: "the node is shutting down".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use bytes::Bytes;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::physical_plan::empty::EmptyExec;
    use quarry_exec::Engine;
    use quarry_exec::distributed::FragmentKey;
    use quarry_exec::distributed::filters::{FilterPart, FilterRoutes};
    use quarry_exec::testing::{Alone, EmptyCatalog};
    use ractor::Actor;

    /// A node's engine (over an empty catalog) and its query manager.
    struct Node {
        _dir: tempfile::TempDir,
        _engine: Arc<Engine>,
        manager: ActorRef<QueryManagerMsg>,
    }

    impl Drop for Node {
        fn drop(&mut self) {
            self.manager.stop(None);
        }
    }

    async fn node(fragment_idle_max: Duration) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let chunks = quarry_storage::ChunkStore::open(dir.path()).expect("chunk store");
        let engine = Engine::new(
            Arc::new(EmptyCatalog),
            Arc::new(quarry_exec::chunks::LocalFiles(chunks)),
            1,
            quarry_exec::QueryResources::default(),
            Some(Arc::new(Alone)),
        );
        let (manager, _) = Actor::spawn(
            None,
            QueryManager,
            QueryManagerArgs {
                engine: Arc::downgrade(&engine),
                fragment_idle_max,
            },
        )
        .await
        .expect("spawns");
        Node {
            _dir: dir,
            _engine: engine,
            manager,
        }
    }

    impl Node {
        async fn ask(&self, request: ExchangeRequest) -> ExchangeResponse {
            answer(&self.manager, request, Some(Duration::from_secs(10)))
                .await
                .expect("answered in time")
        }

        /// Starts fragment `key`: a plan of one partition with no rows,
        /// whose scans wait for `waits`.
        async fn start(&self, key: FragmentKey, waits: Vec<(u64, u32)>) -> ExchangeResponse {
            let plan = Arc::new(EmptyExec::new(Arc::new(Schema::empty())));
            let plan = datafusion_proto::bytes::physical_plan_to_bytes(plan).expect("encodes");
            let filters = FilterRoutes {
                sends: Vec::new(),
                waits,
                builders: 0,
                blooms: Vec::new(),
            };
            self.ask(ExchangeRequest::Start { key, plan, filters })
                .await
        }

        /// Sends filter 5's part built by stage 2 of [`KEY`]'s query.
        async fn send_filter_part(&self) {
            let filter = ExchangeRequest::Filter {
                filter: 5,
                from: FragmentKey { stage: 2, ..KEY },
                part: FilterPart {
                    schema: Bytes::new(),
                    expr: Bytes::new(),
                    keys: Vec::new(),
                },
            };
            assert_eq!(self.ask(filter).await, ExchangeResponse::Received);
        }

        async fn fetch(&self, key: FragmentKey) -> ExchangeResponse {
            self.ask(ExchangeRequest::Fetch { key, partition: 0 }).await
        }

        async fn reports(&self, query: u128) -> usize {
            match self.ask(ExchangeRequest::Metrics { query }).await {
                ExchangeResponse::Metrics(reports) => reports.len(),
                other => panic!("metrics answered {other:?}"),
            }
        }

        /// Waits (at most 10 s) until no fragment actor is alive here, as
        /// the manager learnt from their supervision events.
        async fn wait_all_ended(&self) {
            let waiting = std::time::Instant::now();
            loop {
                let alive = ractor::call!(self.manager, |reply| {
                    QueryManagerMsg::CountFragments { reply }
                })
                .expect("the manager answers");
                if alive == 0 {
                    return;
                }
                assert!(
                    waiting.elapsed() < Duration::from_secs(10),
                    "{alive} fragments are still alive"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    const KEY: FragmentKey = FragmentKey {
        query: 7,
        stage: 1,
        task: 0,
    };

    fn canceled(answer: &ExchangeResponse) -> bool {
        matches!(answer, ExchangeResponse::Failed { sqlstate, .. } if sqlstate == "57014")
    }

    const DONE: ExchangeResponse = ExchangeResponse::Batches {
        ipc: Bytes::new(),
        done: true,
    };

    #[tokio::test]
    async fn a_fragment_no_consumer_fetches_from_stops_itself_after_its_idle_time() {
        let node = node(Duration::from_millis(300)).await;
        assert_eq!(node.start(KEY, Vec::new()).await, ExchangeResponse::Started);
        assert_eq!(node.reports(7).await, 1);
        // Its coordinator never fetches (it died): the fragment ends itself.
        node.wait_all_ended().await;
        let fetch = node.fetch(KEY).await;
        assert!(canceled(&fetch), "{fetch:?}");
    }

    #[tokio::test]
    async fn stopping_a_query_ends_a_fetch_that_waits_for_its_filters() {
        let node = Arc::new(node(Duration::from_secs(600)).await);
        assert_eq!(
            node.start(KEY, vec![(5, 1)]).await,
            ExchangeResponse::Started
        );
        // The fetch waits for filter 5 (up to the fetch wait, 1 s).
        let fetch = tokio::spawn({
            let node = node.clone();
            async move { node.fetch(KEY).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stop = node.ask(ExchangeRequest::Stop { query: 7 }).await;
        assert_eq!(stop, ExchangeResponse::Stopped);
        // It ends with the fragment, not with "nothing yet" at the end of
        // its wait.
        let fetch = fetch.await.expect("fetch task");
        assert!(canceled(&fetch), "{fetch:?}");
        node.wait_all_ended().await;
    }

    #[tokio::test]
    async fn a_filter_part_that_came_before_its_fragment_started_is_given_to_it() {
        let node = node(Duration::from_secs(600)).await;
        node.send_filter_part().await;
        assert_eq!(
            node.start(KEY, vec![(5, 1)]).await,
            ExchangeResponse::Started
        );
        // Its scan does not wait: the partition (no rows) is done at once.
        assert_eq!(node.fetch(KEY).await, DONE);
    }

    #[tokio::test]
    async fn a_filter_part_for_a_running_fragment_lets_its_scans_start() {
        let node = node(Duration::from_secs(600)).await;
        assert_eq!(
            node.start(KEY, vec![(5, 1)]).await,
            ExchangeResponse::Started
        );
        let nothing_yet = ExchangeResponse::Batches {
            ipc: Bytes::new(),
            done: false,
        };
        assert_eq!(node.fetch(KEY).await, nothing_yet);
        node.send_filter_part().await;
        assert_eq!(node.fetch(KEY).await, DONE);
    }

    #[tokio::test]
    async fn a_fragment_that_cannot_start_says_why_and_ends() {
        let node = node(Duration::from_secs(600)).await;
        let start = ExchangeRequest::Start {
            key: KEY,
            plan: Bytes::from_static(b"not a plan"),
            filters: FilterRoutes::default(),
        };
        let answer = node.ask(start).await;
        assert!(
            matches!(&answer, ExchangeResponse::Failed { message, .. } if message.contains("decode")),
            "{answer:?}"
        );
        node.wait_all_ended().await;
        let fetch = node.fetch(KEY).await;
        assert!(canceled(&fetch), "{fetch:?}");
    }
}
