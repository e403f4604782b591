//! Serving the other cores of this node: one task per peer core runs its calls in order;
//! answers that wait for the log are held back, in order, by a second task, and cluster
//! requests this core leads wait in its Raft driver and are answered, in order, by a third
//! (no task per request). Calls that must wait for a key's reservation run in a lane beside
//! the loop (`reserve.rs`). One task files the answers to this core's own calls.

use std::cell::Cell;
use std::rc::Rc;

use corekv_schema::codec::{ErrorCode, Reply};

use super::{Answer, Answered, Call, Core, Done, FetchIo, Slot, Work, bump, mesh};
use crate::time::now_ms;

/// Work another core sent, done here: the answer, the log record it waits for, and reads
/// still to do (by reply index) before it can be sent.
pub struct Worked {
    pub done: Done,
    pub seq: Option<u64>,
    pub fetches: Vec<(usize, FetchIo)>,
}

impl Core {
    /// Runs work another core sent here.
    pub async fn execute_work(&self, work: Work) -> Worked {
        bump(&self.counters.forwarded_in);
        let now_ms = now_ms();
        let mut fetches = Vec::new();
        let mut answer = |i: usize, answered: Answered| match answered {
            Answered::Reply(reply) => reply,
            Answered::Fetch(f) => {
                fetches.push((i, f));
                Reply::error(ErrorCode::Internal, "value not read")
            }
        };
        let (done, seq) = match work {
            Work::One(op, wait) => {
                let (answered, seq) = self.apply(op, now_ms).await;
                (Done::One(answer(0, answered)), seq.filter(|_| wait))
            }
            Work::Many(ops, wait) => {
                let mut last = None;
                let mut replies = Vec::with_capacity(ops.len());
                for (i, op) in ops.into_iter().enumerate() {
                    let (answered, seq) = self.apply(op, now_ms).await;
                    last = seq.or(last);
                    replies.push(answer(i, answered));
                }
                (Done::Many(replies), last.filter(|_| wait))
            }
            Work::Stats => (Done::Stats(self.core_stats()), None),
            Work::Scan(step) => (self.scan_here(&step, now_ms), None),
            work @ (Work::Reserve(_) | Work::Release(_) | Work::Commit(..)) => {
                self.reservation_work(work).await
            }
            Work::Metrics => (Done::Metrics(Box::new(self.metrics_snapshot())), None),
            Work::ClusterStatus => (self.groups_here(), None),
            // In the serving loop, not beside it: later calls from the same peer must not
            // overtake it. The answer waits for the flush record to be durable.
            Work::Flush => {
                let (done, seq) = self.flush_here();
                (done, seq.filter(|_| self.acks_wait()))
            }
            Work::Cluster(..) | Work::Raft(_) => {
                debug_assert!(false, "cluster work is run beside the serving loop");
                (Done::One(Reply::error(ErrorCode::Internal, "cluster work misrouted")), None)
            }
            Work::Checkpoint | Work::Backup(_) => {
                debug_assert!(false, "admin work is run by run_admin");
                (Done::Admin(Err("admin work on the synchronous path".into())), None)
            }
        };
        Worked { done, seq, fetches }
    }

    /// Finishes work whose answer waits for the log or for reads.
    pub(super) async fn finish(&self, worked: Worked) -> Done {
        let Worked { mut done, seq, fetches } = worked;
        if let Some(seq) = seq
            && let Err(failed) = self.durable(seq).await
        {
            return Done::One(failed);
        }
        for (i, f) in fetches {
            let reply = self.resolve_fetch(f).await;
            match &mut done {
                Done::One(r) => *r = reply,
                Done::Many(replies) => replies[i] = reply,
                _ => {}
            }
        }
        done
    }
}

/// Answers held back until their log records are durable, per peer; bounded so a peer that
/// sends faster than the log syncs is slowed down rather than queued without limit.
const DURABLE_ANSWERS_QUEUED_MAX: usize = 1024;

/// Runs on each core for each peer: serves the peer's calls, and files its answers.
pub fn spawn_mesh_tasks(
    core: &Rc<Core>,
    calls: mesh::CallReceivers,
    answers: mesh::AnswerReceivers,
) {
    for (peer, rx) in calls {
        let peer = peer as u16;
        type Held = (u64, Done, u64);
        let (held_tx, held_rx) =
            glommio::channels::local_channel::new_bounded::<Held>(DURABLE_ANSWERS_QUEUED_MAX);
        // Calls that wait for a key's reservation, in arrival order, and how many are there.
        let (lane_tx, lane_rx) = glommio::channels::local_channel::new_unbounded::<Call>();
        let lane_len = Rc::new(Cell::new(0usize));
        // Cluster requests this core leads, waiting in its Raft driver, in arrival order.
        let (led_tx, led_rx) = glommio::channels::local_channel::new_bounded::<(u64, Slot)>(
            DURABLE_ANSWERS_QUEUED_MAX,
        );
        let (lane, waiting) = (core.clone(), lane_len.clone());
        glommio::spawn_local(async move {
            while let Some(call) = lane_rx.recv().await {
                let worked = lane.execute_work(call.work).await;
                let done = lane.finish(worked).await;
                waiting.set(waiting.get() - 1);
                if lane.mesh.answer(peer, Answer { token: call.token, done }).await.is_err() {
                    break;
                }
            }
        })
        .detach();
        let serving = core.clone();
        glommio::spawn_local(async move {
            while let Some(call) = rx.recv().await {
                // A peer that always has calls queued must not starve this core.
                glommio::yield_if_needed().await;
                let call = match call.work {
                    Work::Raft(messages) => {
                        if let Some(r) = serving.cluster.as_ref() {
                            r.deliver(messages);
                        }
                        continue;
                    }
                    Work::Cluster(op, consistency, origin) => {
                        let token = call.token;
                        let sent = match serving.cluster_led(op, consistency, origin).await {
                            // Led here: it waits in the Raft driver, and the led lane answers.
                            Ok(slot) => led_tx.send((token, slot)).await.is_ok(),
                            // Forwarded, or waiting out an election: in a task of its own.
                            Err(op) => {
                                let core = serving.clone();
                                glommio::spawn_local(async move {
                                    let reply = core.cluster_here(op, consistency, origin).await;
                                    let done = Done::One(reply);
                                    let _ = core.mesh.answer(peer, Answer { token, done }).await;
                                })
                                .detach();
                                true
                            }
                        };
                        if !sent {
                            break;
                        }
                        continue;
                    }
                    work => Call { token: call.token, work },
                };
                if matches!(call.work, Work::Checkpoint | Work::Backup(_)) {
                    // Slow: run it beside the loop so this peer's other calls go on.
                    let admin = serving.clone();
                    glommio::spawn_local(async move {
                        let done = admin.run_admin(call.work).await;
                        let _ = admin.mesh.answer(peer, Answer { token: call.token, done }).await;
                    })
                    .detach();
                    continue;
                }
                let keyed = matches!(call.work, Work::One(..) | Work::Many(..) | Work::Reserve(_));
                if keyed && (lane_len.get() > 0 || serving.may_wait_for_reservation(&call.work)) {
                    // Its wait ends with a commit that comes through this very loop, so it
                    // waits in the peer's lane instead; later keyed calls from the peer queue
                    // behind it there, so they still apply in the order the peer sent them.
                    lane_len.set(lane_len.get() + 1);
                    if lane_tx.try_send(call).is_err() {
                        break;
                    }
                    continue;
                }
                let worked = serving.execute_work(call.work).await;
                let token = call.token;
                let sent = match worked {
                    Worked { done, seq: None, fetches } if fetches.is_empty() => {
                        serving.mesh.answer(peer, Answer { token, done }).await.is_ok()
                    }
                    // Answers are matched by token, so later answers may overtake held ones.
                    Worked { done, seq: Some(seq), fetches } if fetches.is_empty() => {
                        held_tx.send((token, done, seq)).await.is_ok()
                    }
                    // Reads from the log run beside the loop, concurrently.
                    worked => {
                        let core = serving.clone();
                        glommio::spawn_local(async move {
                            let done = core.finish(worked).await;
                            let _ = core.mesh.answer(peer, Answer { token, done }).await;
                        })
                        .detach();
                        true
                    }
                };
                if !sent {
                    break;
                }
            }
        })
        .detach();
        let holding = core.clone();
        glommio::spawn_local(async move {
            while let Some((token, done, seq)) = held_rx.recv().await {
                let done = match holding.durable(seq).await {
                    Ok(()) => done,
                    Err(failed) => Done::One(failed),
                };
                if holding.mesh.answer(peer, Answer { token, done }).await.is_err() {
                    break;
                }
            }
        })
        .detach();
        let leading = core.clone();
        glommio::spawn_local(async move {
            while let Some((token, slot)) = led_rx.recv().await {
                let reply = match slot {
                    Slot::Led(led) => match leading.wait_led(*led).await {
                        Ok(reply) => reply,
                        // Its leader was deposed: the general path may wait on elections and
                        // on other cores, so it runs in a task of its own and answers when
                        // done (answers are matched by token); the lane goes on.
                        Err(led) => {
                            let core = leading.clone();
                            glommio::spawn_local(async move {
                                let done = Done::One(core.retry_led(led).await);
                                let _ = core.mesh.answer(peer, Answer { token, done }).await;
                            })
                            .detach();
                            continue;
                        }
                    },
                    slot => leading.resolve(slot).await,
                };
                let done = Done::One(reply);
                if leading.mesh.answer(peer, Answer { token, done }).await.is_err() {
                    break;
                }
            }
        })
        .detach();
    }
    for (_peer, rx) in answers {
        let core = core.clone();
        glommio::spawn_local(async move {
            while let Some(answer) = rx.recv().await {
                core.complete(answer.token, answer.done);
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }
}
