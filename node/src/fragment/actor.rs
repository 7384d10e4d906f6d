//! The fragment actor's ractor implementation (thin: the work is
//! [`Fragment`]'s).

use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use quarry_common::SqlState;
use quarry_exec::Engine;
use quarry_exec::distributed::filters::FilterRoutes;
use quarry_exec::distributed::fragment::Fragment;
use quarry_exec::distributed::{ExchangeResponse, FragmentKey, failed};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinSet;

use super::msg::FragmentMsg;
use super::state::{FragmentState, Running, next_idle_check};

/// Runs one fragment (see [the module](super)).
#[derive(Debug, Default)]
pub struct FragmentActor;

/// What a fragment actor is started with: a coordinator's start request.
pub struct FragmentArgs {
    /// Which fragment.
    pub key: FragmentKey,
    /// Its plan (datafusion-proto).
    pub plan: Bytes,
    /// The dynamic filters it sends and waits for.
    pub routes: FilterRoutes,
    /// The node's engine.
    pub engine: Weak<Engine>,
    /// How long it may go without a fetch before it stops itself.
    pub idle_max: Duration,
    /// Where the answer to the start request goes (`Started`, or why not).
    pub reply: RpcReplyPort<ExchangeResponse>,
}

impl Actor for FragmentActor {
    type Msg = FragmentMsg;
    type State = FragmentState;
    type Arguments = FragmentArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<FragmentMsg>,
        args: FragmentArgs,
    ) -> Result<FragmentState, ActorProcessingErr> {
        // Starting takes a catalog read and decoding the plan: done in
        // post_start, so that spawning never holds up the query manager.
        Ok(FragmentState::Starting(Box::new(args)))
    }

    async fn post_start(
        &self,
        myself: ActorRef<FragmentMsg>,
        state: &mut FragmentState,
    ) -> Result<(), ActorProcessingErr> {
        let FragmentState::Starting(args) = std::mem::replace(state, FragmentState::Stopping)
        else {
            return Ok(());
        };
        let FragmentArgs {
            key,
            plan,
            routes,
            engine,
            idle_max,
            reply,
        } = *args;
        let Some((engine, cluster)) = engine
            .upgrade()
            .and_then(|engine| Some((engine.clone(), engine.cluster()?.clone())))
        else {
            let _ = reply.send(crate::query_manager::shutting_down());
            myself.stop(Some("the node is shutting down".to_owned()));
            return Ok(());
        };
        match Fragment::start(&engine, &cluster, key, &plan, routes).await {
            Ok(fragment) => {
                let _ = reply.send(ExchangeResponse::Started);
                *state = FragmentState::Running(Box::new(Running {
                    fragment,
                    node: cluster.peers().local(),
                    idle_max,
                    fetches: JoinSet::new(),
                }));
                myself.send_after(idle_max, || FragmentMsg::CheckIdle);
            }
            Err(e) => {
                let why = format!("cannot start: {e}");
                let _ = reply.send(failed(e));
                myself.stop(Some(why));
            }
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<FragmentMsg>,
        message: FragmentMsg,
        state: &mut FragmentState,
    ) -> Result<(), ActorProcessingErr> {
        let FragmentState::Running(running) = state else {
            // It could not start and is stopping.
            if let FragmentMsg::Fetch { reply, .. } = message {
                let _ = reply.send(ExchangeResponse::Failed {
                    sqlstate: SqlState::QUERY_CANCELED.code().to_owned(),
                    message: "the fragment could not start".to_owned(),
                });
            }
            return Ok(());
        };
        match message {
            FragmentMsg::Fetch { partition, reply } => {
                let fetch = running.fragment.fetch(partition);
                running.fetches.spawn(async move {
                    let fetched = fetch.await;
                    // Counted before answered: a report asked for after
                    // the answer came counts it.
                    let _ = myself.send_message(FragmentMsg::BatchesSent {
                        rows: fetched.rows,
                        bytes: fetched.bytes,
                        done: fetched.done(),
                    });
                    let _ = reply.send(fetched.answer);
                });
            }
            FragmentMsg::BatchesSent { rows, bytes, done } => {
                running.fragment.sent(rows, bytes, done);
                while running.fetches.try_join_next().is_some() {}
            }
            FragmentMsg::FilterPartReceived { filter, from, part } => {
                running.fragment.receive(filter, from, part);
            }
            FragmentMsg::Report { reply } => {
                let _ = reply.send(running.fragment.report(running.node));
            }
            FragmentMsg::CheckIdle => {
                let idle = running.fragment.idle();
                match next_idle_check(idle, running.idle_max) {
                    Some(after) => {
                        myself.send_after(after, || FragmentMsg::CheckIdle);
                    }
                    None => {
                        let key = running.fragment.key();
                        tracing::info!(
                            query_id = %key.query,
                            stage = key.stage,
                            task = key.task,
                            idle_ms = idle.as_millis() as u64,
                            "no consumer fetched from the fragment; its coordinator is gone, stopping it"
                        );
                        myself.stop(Some("idle".to_owned()));
                    }
                }
            }
        }
        Ok(())
    }
}
