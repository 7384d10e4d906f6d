//! The query manager's ractor implementation.

use std::sync::Weak;
use std::time::Duration;

use quarry_exec::Engine;
use quarry_exec::distributed::fragment::not_running;
use quarry_exec::distributed::{ExchangeRequest, ExchangeResponse};
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort, SupervisionEvent};

use super::msg::QueryManagerMsg;
use super::state::Registry;
use crate::fragment::{FragmentActor, FragmentArgs, FragmentMsg};

/// Runs this node's fragments (see [the module](super)).
#[derive(Debug, Default)]
pub struct QueryManager;

/// What the query manager is started with.
#[derive(Debug, Clone)]
pub struct QueryManagerArgs {
    /// The node's engine (fragments are planned and run by it).
    pub engine: Weak<Engine>,
    /// How long a fragment may go without a fetch before it stops itself
    /// ([`super::FRAGMENT_IDLE_MAX`] in a node).
    pub fragment_idle_max: Duration,
}

/// The query manager's state.
pub struct QueryManagerState {
    args: QueryManagerArgs,
    fragments: Registry<ActorRef<FragmentMsg>>,
}

impl QueryManagerState {
    /// Publishes the number of fragment actors alive.
    fn count(&self) {
        metrics::gauge!("quarry_fragments_running").set(self.fragments.live() as f64);
    }
}

impl Actor for QueryManager {
    type Msg = QueryManagerMsg;
    type State = QueryManagerState;
    type Arguments = QueryManagerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<QueryManagerMsg>,
        args: QueryManagerArgs,
    ) -> Result<QueryManagerState, ActorProcessingErr> {
        Ok(QueryManagerState {
            args,
            fragments: Registry::default(),
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<QueryManagerMsg>,
        _state: &mut QueryManagerState,
    ) -> Result<(), ActorProcessingErr> {
        myself.stop_children(Some("the query manager stopped".to_owned()));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<QueryManagerMsg>,
        message: QueryManagerMsg,
        state: &mut QueryManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let (request, reply) = match message {
            QueryManagerMsg::Answer { request, reply } => (request, reply),
            QueryManagerMsg::CountFragments { reply } => {
                let _ = reply.send(state.fragments.live());
                return Ok(());
            }
        };
        match request {
            ExchangeRequest::Start { key, plan, filters } => {
                let args = FragmentArgs {
                    key,
                    plan,
                    routes: filters,
                    engine: state.args.engine.clone(),
                    idle_max: state.args.fragment_idle_max,
                    reply,
                };
                // The fragment answers the start itself, once started; the
                // requests for it that come meanwhile wait in its mailbox.
                let spawned =
                    Actor::spawn_linked(None, FragmentActor, args, myself.get_cell()).await;
                match spawned {
                    Ok((fragment, _)) => {
                        let (parts, replaced) = state.fragments.started(key, fragment.clone());
                        for (filter, from, part) in parts {
                            let _ = fragment.send_message(FragmentMsg::FilterPartReceived {
                                filter,
                                from,
                                part,
                            });
                        }
                        if let Some(replaced) = replaced {
                            replaced.stop(Some("started again".to_owned()));
                        }
                        state.count();
                    }
                    // The start request's answer went with the arguments:
                    // its caller sees the reply dropped.
                    Err(e) => tracing::error!(error = %e, "cannot spawn a fragment actor"),
                }
            }
            ExchangeRequest::Filter { filter, from, part } => {
                for fragment in state.fragments.received(filter, from, part.clone()) {
                    let _ = fragment.send_message(FragmentMsg::FilterPartReceived {
                        filter,
                        from,
                        part: part.clone(),
                    });
                }
                let _ = reply.send(ExchangeResponse::Received);
            }
            ExchangeRequest::Fetch { key, partition } => match state.fragments.get(&key) {
                Some(fragment) => {
                    // It ended, and the manager has not yet heard.
                    if let Err(MessagingErr::SendErr(FragmentMsg::Fetch { reply, .. })) =
                        fragment.send_message(FragmentMsg::Fetch { partition, reply })
                    {
                        let _ = reply.send(not_running(key));
                    }
                }
                None => {
                    let _ = reply.send(not_running(key));
                }
            },
            ExchangeRequest::Metrics { query } => {
                // Asked of each fragment apart from this loop: one still
                // starting must not hold up the others' requests.
                let fragments = state.fragments.of_query(query);
                tokio::spawn(reports(fragments, reply));
            }
            ExchangeRequest::Stop { query } => {
                for fragment in state.fragments.stop(query) {
                    fragment.stop(Some("the query ended".to_owned()));
                }
                let _ = reply.send(ExchangeResponse::Stopped);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<QueryManagerMsg>,
        event: SupervisionEvent,
        state: &mut QueryManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(fragment, _, reason) => {
                tracing::debug!(reason = ?reason, "a fragment ended");
                state.fragments.ended(|f| f.get_id() == fragment.get_id());
                state.count();
            }
            SupervisionEvent::ActorFailed(fragment, e) => {
                // A panic in a fragment's own code: that query fails (its
                // fetches find it gone), the node and other queries go on.
                tracing::error!(error = %e, "a fragment failed");
                state.fragments.ended(|f| f.get_id() == fragment.get_id());
                state.count();
            }
            _ => {}
        }
        Ok(())
    }
}

/// Answers a metrics request with the reports of `fragments`.
async fn reports(fragments: Vec<ActorRef<FragmentMsg>>, reply: RpcReplyPort<ExchangeResponse>) {
    let mut reports = Vec::with_capacity(fragments.len());
    for fragment in fragments {
        // A fragment that ended since has nothing more to say.
        if let Ok(report) = ractor::call!(fragment, |reply| FragmentMsg::Report { reply }) {
            reports.push(report);
        }
    }
    let _ = reply.send(ExchangeResponse::Metrics(reports));
}
