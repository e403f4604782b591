//! Membership operations while serving: removing a node (alive or dead) and moving every
//! partition it held to the node the ring now names, so the replication factor is restored.
//! The records are `cluster::plan`'s; the Raft steps are `cluster::moves`'.
//!
//! Three loops, none of which holds state a restart would lose:
//! - [`watch`], on the metadata group's core: reads the membership keys from this replica
//!   into the node's [`View`](crate::cluster::plan::View); where this node leads the
//!   metadata group, it ends a plan whose every partition is done.
//! - [`reconcile`], on every core: each partition this core leads takes the next step toward
//!   the running plan's target, and records `done/<p>` once there. It also keeps the core's
//!   map (what forwarding and `Topology` use) in step with the recorded one.
//! - [`remove`] starts a plan, from the HTTP API.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_schema::codec::{Condition, Consistency, ErrorCode, Op, Reply};

use super::{Core, Origin};
use crate::cluster::meta::{self, decode_map, done_key, map_key, members_key, plan_key};
use crate::cluster::moves::{self, Step};
use crate::cluster::plan::{
    self, Member, Operation, Plan, PlanState, Seen, Standing, decode_members, encode_members,
};
use crate::cluster::replica::{MoveView, Submitted};
use crate::time::now_ms;

/// How often the metadata core rereads the membership keys.
const WATCH_EVERY: Duration = Duration::from_millis(200);
/// How often each core's leaders step toward the target.
const RECONCILE_EVERY: Duration = Duration::from_millis(100);

/// The members this node knows (not removed), with their cluster addresses, lowest id first:
/// the recorded ones once read, the founders (`--initial-cluster`) until then.
pub fn members_now(core: &Core) -> Vec<(u64, std::net::SocketAddr)> {
    let Some(r) = core.cluster.as_ref() else { return Vec::new() };
    let seen = core.node.view.get();
    let mut members: Vec<(u64, std::net::SocketAddr)> = if seen.members.is_empty() {
        r.config.nodes.clone()
    } else {
        let kept = seen.members.iter().filter(|m| m.standing != Standing::Removed);
        kept.map(|m| (m.id, m.addr)).collect()
    };
    members.sort_unstable();
    members
}

/// Reads a metadata key from this replica: (value, version), or None when absent.
async fn local(core: &Core, key: Bytes) -> Option<(Bytes, u64)> {
    match core.store.execute_reply(Op::get(key), now_ms()).await {
        Reply::Value { value, version, .. } => Some((value, version)),
        _ => None,
    }
}

/// This replica's reading of the membership keys.
async fn read(core: &Core) -> Seen {
    let mut seen = Seen::default();
    if let Some((value, _)) = local(core, members_key()).await {
        match decode_members(&value) {
            Ok(members) => seen.members = members,
            Err(e) => tracing::error!(error = %e, "metadata: members"),
        }
    }
    if let Some((value, version)) = local(core, map_key()).await
        && let Ok(map) = decode_map(&value)
    {
        seen.map = map;
        seen.map_version = version;
    }
    if let Some((value, version)) = local(core, plan_key()).await {
        match Plan::decode(&value) {
            Ok(p) => {
                seen.plan = Some(p);
                seen.plan_version = version;
            }
            Err(e) => tracing::error!(error = %e, "metadata: plan"),
        }
    }
    if let Some((value, _)) = local(core, crate::cluster::meta::users_key()).await {
        match crate::auth::Users::decode(&value) {
            Ok(users) => core.node.users.replace(users),
            Err(e) => tracing::error!(error = %e, "metadata: users"),
        }
    }
    if let Some(p) = seen.running().cloned() {
        for partition in 0..p.target.len() as u32 {
            if let Some((value, _)) = local(core, done_key(partition)).await
                && value == p.id.to_string()
            {
                seen.done.push(partition);
            }
        }
    }
    seen
}

/// See the module doc. Runs on the metadata group's core for as long as the node does.
pub async fn watch(core: Rc<Core>) {
    let Some(r) = core.cluster.clone() else { return };
    // The running plan's id, how many partitions were done, and since when.
    let mut progress: Option<(u64, usize, Instant)> = None;
    let stall = Duration::from_secs(r.config.plan_stall_s);
    loop {
        let seen = read(&core).await;
        let finish = seen.running().filter(|p| seen.done.len() == p.target.len()).cloned();
        core.node.view.set(seen.clone());
        let leads = r.leadership(core.partitions).0;
        if let Some(p) = finish
            && leads
        {
            finish_plan(&core, &seen, p).await;
        } else if let Some(p) = seen.running() {
            let done = seen.done.len();
            match progress {
                Some((id, before, _)) if id == p.id && before == done => {}
                _ => progress = Some((p.id, done, Instant::now())),
            }
            if let Some((_, _, since)) = progress
                && leads
                && since.elapsed() >= stall
            {
                fail_plan(&core, &seen, p.clone(), stall).await;
            }
        } else {
            progress = None;
        }
        glommio::timer::sleep(WATCH_EVERY).await;
    }
}

/// No partition of the plan finished moving for `stall`: the plan ends as failed, naming the
/// partitions left, and the cores stop moving them. Nothing is undone: whatever moved stays
/// moved (each partition is whole at every step), and the operator's next operation — the
/// node removed again, or the removal asked again — starts from there.
async fn fail_plan(core: &Rc<Core>, seen: &Seen, mut p: Plan, stall: Duration) {
    let left: Vec<u32> = (0..p.target.len() as u32).filter(|q| !seen.done.contains(q)).collect();
    p.state = PlanState::Failed;
    p.moved = seen.done.len() as u32;
    p.finished_ms = now_ms();
    let undo = match p.operation {
        Operation::Add { node, .. } => format!("remove node {node} to undo it"),
        Operation::Remove { node } => format!("remove node {node} again to retry"),
    };
    p.error = format!(
        "no partition finished moving for {} s; not done: {left:?} (is every node of the \
         target up?); {undo}",
        stall.as_secs()
    );
    let op = Op::set_if(plan_key(), p.encode(), Condition::IfVersion(seen.plan_version));
    match core.cluster_op(op, Consistency::Strong, Origin::Client).await {
        Reply::Written { .. } => {
            let what = p.operation.describe();
            tracing::error!(plan = p.id, error = %p.error, "membership: {what} failed");
        }
        other => tracing::warn!(reply = ?other, "membership: failing the plan did not commit"),
    }
}

/// Every partition reached the target: it becomes the map, the node leaves the members, and
/// the plan ends last (a replicated entry holds one write). Each write is the same whoever
/// makes it, so a metadata leader that takes over half way makes them again.
async fn finish_plan(core: &Rc<Core>, seen: &Seen, mut p: Plan) {
    let partitions = core.partitions as usize;
    let mut members = seen.members.clone();
    match p.operation {
        Operation::Remove { node } => {
            members.iter_mut().filter(|m| m.id == node).for_each(|m| {
                m.standing = Standing::Removed;
            });
        }
        // Recorded active when the plan started; again, should that write have been lost.
        Operation::Add { node, addr } => {
            if !members.iter().any(|m| m.id == node) {
                members.push(Member { id: node, addr, standing: Standing::Active });
            }
        }
    }
    p.state = PlanState::Done;
    p.moved = p.moving;
    p.finished_ms = now_ms();
    let writes = [
        Op::set(map_key(), meta::encode_map(&p.target[..partitions])),
        Op::set(members_key(), encode_members(&members)),
        Op::set_if(plan_key(), p.encode(), Condition::IfVersion(seen.plan_version)),
    ];
    for op in writes {
        match core.cluster_op(op, Consistency::Strong, Origin::Client).await {
            Reply::Written { .. } => {}
            other => {
                tracing::warn!(reply = ?other, "membership: ending the plan did not commit");
                return;
            }
        }
    }
    tracing::info!(plan = p.id, "membership: {} done", p.operation.describe());
}

/// See the module doc. Runs on every core of a cluster node.
pub async fn reconcile(core: Rc<Core>) {
    let Some(r) = core.cluster.clone() else { return };
    // When each partition's `done` was last written, by (plan, partition).
    let mut reported: HashMap<(u64, u32), Instant> = HashMap::new();
    let mut map_version = 0;
    let mut transfers: HashMap<u32, Instant> = HashMap::new();
    loop {
        glommio::timer::sleep(RECONCILE_EVERY).await;
        let seen = core.node.view.get();
        // Every member gets a link, the ones added since this node started too.
        for m in seen.members.iter().filter(|m| m.standing != Standing::Removed) {
            r.links.ensure(m.id, m.addr);
        }
        if let Some(Operation::Add { node, addr }) = seen.running().map(|p| &p.operation) {
            r.links.ensure(*node, *addr);
        }
        if seen.map_version != map_version && !seen.map.is_empty() {
            map_version = seen.map_version;
            let mut members = plan::active(&seen.members);
            if let Some(p) = seen.running() {
                members = p.target[core.partitions as usize].clone();
            }
            r.set_map(&seen.map, members);
        }
        let Some(p) = seen.running().cloned() else {
            balance_leaders(&core, &seen, &mut transfers);
            continue;
        };
        // The metadata group moves last: a node removed from it learns it was removed from
        // the cluster and stops, and must not before its data partitions have moved off it
        // (it would leave them by failover, not by handing over).
        let data_done = (0..core.partitions).all(|q| seen.done.contains(&q));
        let led: Vec<(u32, MoveView)> = r
            .partitions_led()
            .into_iter()
            .filter_map(|partition| Some((partition, r.move_view(partition)?)))
            .collect();
        let mut moving = led.iter().filter(|(_, view)| moves::under_way(view)).count();
        for (partition, view) in led {
            if partition == core.partitions && !data_done {
                continue;
            }
            let Some(target) = p.target.get(partition as usize) else { continue };
            let step = moves::next_step(r.node, &view, target);
            if !moves::under_way(&view) && matches!(step, Step::Propose(_)) {
                // A new move: one core moves a few partitions at a time, so the snapshots,
                // installs and handovers of a plan come in turn, not all in one burst.
                if moving >= MOVES_PER_CORE {
                    continue;
                }
                moving += 1;
            }
            match step {
                Step::Propose(change) => {
                    let id = r.submit_membership(partition, change);
                    // Its outcome shows in the next view: nobody waits for the answer.
                    r.forget(Submitted::Proposal(id));
                }
                Step::Transfer(to) => r.transfer_leader(partition, to),
                Step::Wait(_) => {}
                Step::Done => {
                    // Written again if the view still lacks it a while later (the write
                    // may have been lost with a metadata leader).
                    let recent = reported
                        .get(&(p.id, partition))
                        .is_some_and(|at| at.elapsed() < REPORT_AGAIN_AFTER);
                    if seen.done.contains(&partition) || recent {
                        continue;
                    }
                    reported.insert((p.id, partition), Instant::now());
                    let op = Op::set(done_key(partition), p.id.to_string());
                    let core = core.clone();
                    glommio::spawn_local(async move {
                        let reply = core.cluster_op(op, Consistency::Strong, Origin::Client).await;
                        if !matches!(reply, Reply::Written { .. }) {
                            tracing::warn!(partition, ?reply, "membership: done not recorded");
                        }
                    })
                    .detach();
                }
            }
        }
        reported.retain(|(id, partition), _| *id == p.id && !seen.done.contains(partition));
    }
}

/// Partitions one core moves at a time (see `reconcile`).
const MOVES_PER_CORE: usize = 1;

/// How long a partition's `done` may stay unseen before its leader writes it again.
const REPORT_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// Leadership transfers one core starts per round, at most: the rest wait for the next.
const TRANSFERS_PER_ROUND: usize = 2;
/// How long a partition's transfer is given before it is asked for again.
const TRANSFER_PATIENCE: Duration = Duration::from_secs(3);

/// Hands each partition this core leads to the node `plan::leaders` picks for it, among the
/// nodes heard from lately, once that node is caught up: after a failover, a restart or a
/// join, leadership spreads evenly again rather than staying where elections left it.
fn balance_leaders(core: &Rc<Core>, seen: &Seen, transfers: &mut HashMap<u32, Instant>) {
    let Some(r) = core.cluster.as_ref() else { return };
    let led = r.partitions_led();
    if led.is_empty() {
        return;
    }
    let heard = |n: u64| {
        n == r.node
            || core
                .node
                .peers
                .last(n)
                .is_some_and(|(ago, _)| ago < crate::cluster::health::DOWN_AFTER)
    };
    let mut map = r.map();
    map.push(r.replicas_of(core.partitions));
    let active = |n: u64| {
        seen.members.is_empty()
            || seen.members.iter().any(|m| m.id == n && m.standing == Standing::Active)
    };
    let up: Vec<u64> = map.iter().flatten().copied().filter(|&n| heard(n) && active(n)).collect();
    let wanted = plan::leaders(&map, &up);
    transfers.retain(|_, at| at.elapsed() < TRANSFER_PATIENCE);
    let mut started = 0;
    for p in led {
        let Some(Some(to)) = wanted.get(p as usize).copied() else { continue };
        if to == r.node || transfers.contains_key(&p) || started == TRANSFERS_PER_ROUND {
            continue;
        }
        let Some(view) = r.move_view(p) else { continue };
        let voter = view.conf.voters.iter().any(|v| crate::cluster::group::node_of(*v) == to);
        let caught_up = view.progress.iter().any(|&(id, matched, replicating)| {
            // raft-rs brings it the rest before it hands over; under a write load a follower
            // is never exactly at the leader's last index.
            crate::cluster::group::node_of(id) == to
                && replicating
                && matched + crate::cluster::moves::CAUGHT_UP_GAP >= view.last_index
        });
        if voter && caught_up && !view.joint && !view.pending {
            tracing::info!(partition = p, to, "handing leadership over, to balance leaders");
            r.transfer_leader(p, to);
            transfers.insert(p, Instant::now());
            started += 1;
        }
    }
}

/// Why a membership request is refused: an HTTP status code and the reason.
pub type Refused = (u16, String);

/// Starts removing `node`: the plan moves each of its replicas to the node the ring over the
/// remaining members names. Works whether `node` is up or not.
pub async fn remove(core: &Rc<Core>, node: u64) -> Result<Plan, Refused> {
    start(core, Operation::Remove { node }).await
}

/// Starts adding `node`, listening at `addr` (started with `--join`): the plan moves to it
/// the replicas the ring over the members with it names. It must answer at `addr`.
pub async fn add(core: &Rc<Core>, node: u64, addr: std::net::SocketAddr) -> Result<Plan, Refused> {
    let connect = glommio::net::TcpStream::connect_timeout(addr, Duration::from_secs(2)).await;
    if let Err(e) = connect {
        return Err((
            422,
            format!("node {node} cannot be reached at {addr}: {e}; start it with --join first"),
        ));
    }
    start(core, Operation::Add { node, addr }).await
}

async fn start(core: &Rc<Core>, operation: Operation) -> Result<Plan, Refused> {
    let Some(r) = core.cluster.as_ref() else {
        return Err((409, "this node runs without a cluster".into()));
    };
    // Read through the metadata leader, so two operators never both see no plan.
    let (members, _) = strong(core, members_key()).await?;
    let members = match members {
        Some(value) => decode_members(&value).map_err(|e| (500, e))?,
        None => return Err((503, "the cluster has not recorded its members yet".into())),
    };
    let (plan, plan_version) = strong(core, plan_key()).await?;
    if let Some(value) = plan {
        let p = Plan::decode(&value).map_err(|e| (500, e))?;
        if p.state == PlanState::Running {
            let why =
                format!("another membership operation is running: {}", p.operation.describe());
            return Err((409, why));
        }
    }
    let mut after = members.clone();
    let (node, standing) = match operation {
        Operation::Remove { node } => {
            if let Some(why) = plan::refuse_removal(&members, node, r.config.replication_factor) {
                let status = if members.iter().any(|m| m.id == node) { 409 } else { 404 };
                return Err((status, why));
            }
            (node, Standing::Leaving)
        }
        Operation::Add { node, addr } => {
            if let Some(why) = plan::refuse_addition(&members, node, addr) {
                return Err((409, why));
            }
            after.push(Member { id: node, addr, standing: Standing::Active });
            (node, Standing::Active)
        }
    };
    let (map, map_version) = strong(core, map_key()).await?;
    let map = map.and_then(|v| decode_map(&v).ok()).unwrap_or_else(|| r.map());
    let remaining: Vec<u64> = plan::active(&after)
        .into_iter()
        .filter(|n| *n != node || standing == Standing::Active)
        .collect();
    let target = plan::target_map(&remaining, core.partitions, r.config.replication_factor);
    let moving = map.iter().zip(&target).filter(|(now, to)| !same_set(now, to)).count() as u32 + 1;
    let plan = Plan {
        id: map_version.max(plan_version) + 1,
        operation: operation.clone(),
        state: PlanState::Running,
        target,
        moving,
        moved: 0,
        started_ms: now_ms(),
        finished_ms: 0,
        error: String::new(),
    };
    let condition =
        if plan_version == 0 { Condition::IfAbsent } else { Condition::IfVersion(plan_version) };
    let leaving: Vec<Member> = after
        .into_iter()
        .map(|mut m| {
            if m.id == node {
                m.standing = standing;
            }
            m
        })
        .collect();
    // The plan is the lock: written only if no other was since this one read it. The
    // members follow; a plan whose members write is lost still runs (its target already
    // leaves the node out) and marks the node removed when done.
    match core
        .cluster_op(
            Op::set_if(plan_key(), plan.encode(), condition),
            Consistency::Strong,
            Origin::Client,
        )
        .await
    {
        Reply::Written { .. } => {}
        Reply::Error(e) if e.code == ErrorCode::ConditionFailed => {
            return Err((409, "another membership operation started meanwhile".into()));
        }
        Reply::Error(e) => return Err((503, e.message.into_owned())),
        other => return Err((500, format!("unexpected answer {}", other.name()))),
    }
    // An added node must be a member at once: every node links to members, and its
    // replicas are to be made there.
    let members = Op::set(members_key(), encode_members(&leaving));
    for tries in 1.. {
        match core.cluster_op(members.clone(), Consistency::Strong, Origin::Client).await {
            Reply::Written { .. } => break,
            other if standing == Standing::Active && tries < 50 => {
                tracing::warn!(reply = ?other, "membership: recording node {node}; again");
                glommio::timer::sleep(Duration::from_millis(200)).await;
            }
            other => {
                tracing::warn!(reply = ?other, "membership: node {node} not marked leaving");
                break;
            }
        }
    }
    tracing::info!(node, plan = plan.id, "membership: {}", plan.operation.describe());
    Ok(plan)
}

fn same_set(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

/// A metadata key read through the metadata group's leader: (value, version; 0 if absent).
async fn strong(core: &Rc<Core>, key: Bytes) -> Result<(Option<Bytes>, u64), Refused> {
    match core.cluster_op(Op::get(key), Consistency::Strong, Origin::Client).await {
        Reply::Value { value, version, .. } => Ok((Some(value), version)),
        Reply::Error(e) if e.code == ErrorCode::NotFound => Ok((None, 0)),
        Reply::Error(e) => Err((503, format!("the metadata group cannot answer: {}", e.message))),
        other => Err((500, format!("unexpected answer {}", other.name()))),
    }
}
