//! A core in cluster mode: where a keyed request goes, and how replicated writes, snapshots
//! and Raft traffic meet this core's engine.
//!
//! A keyed request is run on the core that owns its partition ([`Core::cluster_op`]); there:
//! - an eventual read of a partition this node holds is answered from the local engine;
//! - a strong read on the partition's leader waits for a read index (ReadIndex), then reads
//!   the local engine; a write on the leader is proposed and answered once applied;
//! - anything else is forwarded to the leader over the node link (following `WrongNode`
//!   hints, waiting out an election), unless another node forwarded it here: then it is
//!   answered `WrongNode`, so a request is forwarded at most once per attempt. A native
//!   client that routed by the topology (`direct`) is answered `WrongNode` with the map.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corekv_schema::codec::{Consistency, ErrorCode, Op, Reply};
use corekv_schema::placement;

use super::{Answered, Core, Done, Led, LedWait, Origin, Slot, Work, unexpected};
use crate::cluster::CounterValues;
use crate::cluster::command;
use crate::cluster::meta;
use crate::cluster::replica::{GroupStatus, wrong_node, wrong_node_error};
use crate::cluster::replica::{PROPOSAL_TIMEOUT, Submitted};
use crate::config::ConsistencyMode;
use crate::time::now_ms;

/// How long a forwarded write waits for its answer after its leader changed, before it is
/// answered "outcome unknown": a handover's old leader answers within a round.
const HANDOVER_GRACE: Duration = Duration::from_millis(500);

/// How long a request keeps looking for a partition's leader (elections, lost links).
const LEADER_WAIT: Duration = Duration::from_secs(5);

/// The key a request is routed by: its own, or for a piece of a batch the first op's, once
/// every op is checked to be keyed, in the same partition, and at most one a write (a Raft
/// entry gives one version, its index). The reason otherwise.
fn routing_key(op: &Op, partitions: u32) -> Result<Bytes, String> {
    let Op::Batch(ops) = op else {
        return op.key().cloned().ok_or_else(|| format!("{} has no key", op.name()));
    };
    let mut first: Option<(&Bytes, u32)> = None;
    let mut writes = 0;
    for op in ops {
        let Some(k) = op.key() else {
            return Err(format!("{} is not allowed in a batch", op.name()));
        };
        let partition = meta::partition_of(k, partitions);
        if first.get_or_insert((k, partition)).1 != partition {
            return Err("a replicated batch spans partitions".into());
        }
        writes += usize::from(!matches!(op, Op::Get { .. }));
    }
    if writes > 1 {
        return Err("a replicated batch holds more than one write".into());
    }
    first.map(|(k, _)| k.clone()).ok_or_else(|| "empty batch".into())
}

/// Cuts a batch into the pieces the cluster applies atomically, in order: consecutive ops
/// on one partition, reads first, closed by at most one write. So `GETSET` (`[Get, Set]`),
/// `GETDEL` and `SET … GET` are each one piece, read and written at one log position.
/// An op without a key is a piece of its own (and is refused).
fn pieces(ops: Vec<Op>, partitions: u32) -> Vec<Vec<Op>> {
    let mut out: Vec<Vec<Op>> = Vec::new();
    let mut open: Option<u32> = None;
    for op in ops {
        let partition = op.key().map(|k| meta::partition_of(k, partitions));
        let joins = partition.is_some() && partition == open;
        match out.last_mut() {
            Some(piece) if joins => piece.push(op),
            _ => out.push(vec![op]),
        }
        let closes = !matches!(out.last().and_then(|p| p.last()), Some(Op::Get { .. }));
        open = if closes { None } else { partition };
    }
    out
}

impl Core {
    /// Starts `work` in its own task; the slot resolves with its reply.
    pub(super) fn spawn_slot(
        &self,
        work: impl std::future::Future<Output = Reply> + 'static,
    ) -> Slot {
        let token = self.token();
        let id = token.id;
        let Some(me) = self.this.upgrade() else {
            self.complete(id, Done::One(Reply::error(ErrorCode::ShuttingDown, "core stopping")));
            return Slot::Remote(token);
        };
        glommio::spawn_local(async move {
            let reply = work.await;
            me.complete(id, Done::One(reply));
        })
        .detach();
        Slot::Remote(token)
    }

    /// Cluster mode's `dispatch` of a keyed operation, a batch or a topology request. A keyed
    /// operation goes to the core that owns its partition; there, a partition this core leads
    /// takes it straight into its Raft driver ([`Core::cluster_led`]), and anything else
    /// (forwarding to the leader, waiting out an election) runs in a task of its own.
    pub(super) async fn cluster_slot(
        &self,
        op: Op,
        consistency: Consistency,
        origin: Origin,
    ) -> Slot {
        let Some(me) = self.this.upgrade() else {
            return Slot::Ready(Reply::error(ErrorCode::ShuttingDown, "core stopping"));
        };
        let reserved = |op: &Op| op.key().is_some_and(|k| meta::is_meta(k));
        let refused = match &op {
            Op::Batch(ops) => ops.iter().any(reserved),
            op => reserved(op),
        };
        if refused {
            return Slot::Ready(Reply::error(
                ErrorCode::BadRequest,
                "keys starting with the byte 0xff and \"corekv/meta/\" are reserved for the \
                 cluster's metadata",
            ));
        }
        match op {
            Op::Topology => self.spawn_slot(async move { super::topology::topology(&me).await }),
            // A barrier in its connection: the requests after it are dispatched once it is
            // done, so a batch and a later request on the same key apply in request order.
            Op::Batch(ops) => Slot::Ready(me.cluster_batch(ops, consistency).await),
            op => {
                let owner = op.key().map_or(self.index, |k| self.owner_of(k));
                if owner != self.index {
                    // The owning core runs it; its answer comes back under this one id.
                    let work = Work::Cluster(op, consistency, origin);
                    return Slot::Remote(self.forward(owner, work).await);
                }
                match self.cluster_led(op, consistency, origin).await {
                    Ok(slot) => slot,
                    Err(op) => self
                        .spawn_slot(async move { me.cluster_here(op, consistency, origin).await }),
                }
            }
        }
    }

    /// A request for a partition this core holds, when no waiting of its own is needed: an
    /// eventual read is answered from this replica; on the leader, a write is proposed and a
    /// strong read asks for a read index, and the slot waits in the Raft driver for either.
    /// The op comes back when it needs the general path.
    pub(super) async fn cluster_led(
        &self,
        op: Op,
        consistency: Consistency,
        origin: Origin,
    ) -> Result<Slot, Op> {
        let (Some(r), Some(key)) = (self.cluster.as_ref(), op.key()) else { return Err(op) };
        let partition = meta::partition_of(key, self.partitions);
        let consistency = self.consistency_of(consistency);
        let is_read = matches!(op, Op::Get { .. });
        if is_read && consistency == Consistency::Eventual && r.has_group(partition) {
            return Ok(match self.apply(op, now_ms()).await {
                (Answered::Reply(reply), _) => Slot::Ready(reply),
                (Answered::Fetch(f), _) => Slot::Fetch(f),
            });
        }
        if !r.leadership(partition).0 {
            return Err(op);
        }
        let submitted = if is_read {
            Submitted::Read(r.submit_read(partition))
        } else {
            match r.try_submit(partition, command::encode(now_ms(), &op)) {
                Ok(id) => Submitted::Proposal(id),
                Err(refused) => return Ok(Slot::Ready(refused)),
            }
        };
        let deadline = Instant::now() + PROPOSAL_TIMEOUT;
        let wait = LedWait { submitted, replicas: r.clone() };
        Ok(Slot::Led(Box::new(Led { op, consistency, origin, partition, deadline, wait })))
    }

    /// Waits for a request [`Core::cluster_led`] queued: its reply, or the request back when
    /// its leader was deposed before proposing it (`WrongNode`: nothing happened), for the
    /// general path ([`Core::retry_led`]).
    pub(super) async fn wait_led(&self, led: Led) -> Result<Reply, Led> {
        let (r, partition, deadline) = (led.wait.replicas.clone(), led.partition, led.deadline);
        let reply = match led.wait.submitted {
            Submitted::Proposal(id) => r.proposal_reply(partition, id, deadline).await,
            Submitted::Read(id) => match r.read_ready(partition, id, deadline).await {
                Ok(()) => return Ok(self.read_local(led.op).await),
                Err(reply) => reply,
            },
        };
        match reply {
            Reply::Error(e)
                if e.code == ErrorCode::WrongNode
                    && matches!(led.origin, Origin::Client | Origin::Direct) =>
            {
                Err(led)
            }
            other => Ok(other),
        }
    }

    /// A led request whose leader was deposed: forwarded to the new leader (a client that
    /// does not route), or answered `WrongNode` with the map (one that does).
    pub(super) async fn retry_led(self: &Rc<Self>, led: Led) -> Reply {
        let Led { op, consistency, origin, partition, .. } = led;
        match origin {
            Origin::Direct => {
                let (_, leader) =
                    self.cluster.as_ref().map_or((false, 0), |r| r.leadership(partition));
                self.wrong_node_direct(partition, leader).await
            }
            _ => Box::pin(self.cluster_here(op, consistency, origin)).await,
        }
    }

    /// [`Core::wait_led`], then [`Core::retry_led`] if need be.
    pub(super) async fn resolve_led(&self, led: Led) -> Reply {
        match self.wait_led(led).await {
            Ok(reply) => reply,
            Err(led) => match self.rc() {
                Some(me) => me.retry_led(led).await,
                None => Reply::error(ErrorCode::ShuttingDown, "core stopping"),
            },
        }
    }

    /// The consistency a request gets: its own, or the node's default.
    fn consistency_of(&self, asked: Consistency) -> Consistency {
        match (asked, self.cluster.as_ref().map(|r| r.config.consistency)) {
            (Consistency::Default, Some(ConsistencyMode::Eventual)) => Consistency::Eventual,
            (Consistency::Default, _) => Consistency::Strong,
            (c, _) => c,
        }
    }

    /// A client's batch: its pieces (see [`pieces`]), each atomic. Pieces of one partition
    /// run one after another, in batch order; pieces of different partitions side by side
    /// (their keys differ, so no order between them is observable but their timing).
    async fn cluster_batch(self: &Rc<Self>, ops: Vec<Op>, consistency: Consistency) -> Reply {
        let pieces = pieces(ops, self.partitions);
        let mut chains: std::collections::BTreeMap<Option<u32>, Vec<(usize, Vec<Op>)>> =
            Default::default();
        for (i, piece) in pieces.into_iter().enumerate() {
            let partition = piece[0].key().map(|k| meta::partition_of(k, self.partitions));
            chains.entry(partition).or_default().push((i, piece));
        }
        let tasks: Vec<_> = chains
            .into_values()
            .map(|chain| {
                let me = self.clone();
                glommio::spawn_local(async move {
                    let mut done = Vec::with_capacity(chain.len());
                    for (i, piece) in chain {
                        done.push((i, me.cluster_piece(piece, consistency).await));
                    }
                    done
                })
            })
            .collect();
        let mut answered = Vec::new();
        for task in tasks {
            answered.extend(task.await);
        }
        answered.sort_by_key(|(i, _)| *i);
        Reply::Batch(answered.into_iter().flat_map(|(_, replies)| replies).collect())
    }

    /// One piece of a batch: its replies, one per op.
    async fn cluster_piece(
        self: &Rc<Self>,
        mut piece: Vec<Op>,
        consistency: Consistency,
    ) -> Vec<Reply> {
        let n = piece.len();
        if n == 1 {
            let op = piece.pop().expect("one op");
            return vec![match op.key() {
                Some(_) => self.cluster_op(op, consistency, Origin::Client).await,
                None => Reply::error(
                    ErrorCode::BadRequest,
                    format!("{} is not allowed in a batch", op.name()),
                ),
            }];
        }
        match self.cluster_op(Op::Batch(piece), consistency, Origin::Client).await {
            Reply::Batch(answers) if answers.len() == n => answers,
            // The piece as a whole failed (no leader, refused): so did each of its ops.
            failed => vec![failed; n],
        }
    }

    /// Runs a keyed operation, or a piece of a batch, in the cluster, from any core of this
    /// node.
    pub async fn cluster_op(
        self: &Rc<Self>,
        op: Op,
        consistency: Consistency,
        origin: Origin,
    ) -> Reply {
        let key = match routing_key(&op, self.partitions) {
            Ok(key) => key,
            Err(reason) => return Reply::error(ErrorCode::BadRequest, reason),
        };
        let owner = self.owner_of(&key);
        if owner == self.index {
            return self.cluster_here(op, consistency, origin).await;
        }
        let token = self.forward(owner, Work::Cluster(op, consistency, origin)).await;
        match self.answer(token).await {
            Done::One(reply) => reply,
            other => unexpected(other),
        }
    }

    /// `cluster_op` on the core that owns the partition.
    pub(super) async fn cluster_here(
        self: &Rc<Self>,
        op: Op,
        consistency: Consistency,
        origin: Origin,
    ) -> Reply {
        let Some(r) = self.cluster.as_ref() else {
            return Reply::error(ErrorCode::Internal, "not in cluster mode");
        };
        let key = match routing_key(&op, self.partitions) {
            Ok(key) => key,
            Err(reason) => return Reply::error(ErrorCode::BadRequest, reason),
        };
        let partition = meta::partition_of(&key, self.partitions);
        // Direct clients and peers route themselves: they get the leader, not a forward.
        let forwards = origin == Origin::Client;
        let consistency = self.consistency_of(consistency);
        let is_read = match &op {
            Op::Batch(ops) => ops.iter().all(|op| matches!(op, Op::Get { .. })),
            op => matches!(op, Op::Get { .. }),
        };
        let deadline = Instant::now() + LEADER_WAIT;
        let replicas = r.replicas_of(partition);
        // A partition this node holds no replica of: the leader it was last told of.
        let mut hint = r.remote_leader(partition);
        let mut attempt = 0usize;
        let mut hops = 0u32;
        loop {
            let local = r.has_group(partition);
            if local && is_read && consistency == Consistency::Eventual {
                return self.read_local(op).await;
            }
            let (leading, known) = r.leadership(partition);
            if leading {
                let reply = if is_read {
                    match r.read_barrier(partition).await {
                        Ok(()) => return self.read_local(op).await,
                        Err(reply) => reply,
                    }
                } else {
                    r.propose(partition, &op).await
                };
                match &reply {
                    Reply::Error(e) if e.code == ErrorCode::WrongNode && forwards => {
                        hint = e.leader;
                    }
                    Reply::Error(e)
                        if e.code == ErrorCode::WrongNode && origin == Origin::Direct =>
                    {
                        return self.wrong_node_direct(partition, e.leader).await;
                    }
                    _ => return reply,
                }
            } else if origin == Origin::Direct {
                return self.wrong_node_direct(partition, known).await;
            } else if !forwards {
                return wrong_node(partition, known);
            } else {
                let target = match (known, hint) {
                    (k, _) if k != 0 && k != r.node => k,
                    (_, h) if h != 0 && h != r.node => h,
                    // No leader known here: ask the replicas in turn, preferred leader first.
                    _ if !local => replicas[attempt % replicas.len()],
                    _ => 0,
                };
                attempt += 1;
                if target != 0 {
                    // A leader that stops answering (paused, cut off) is replaced by an
                    // election this replica sees: stop waiting for it then.
                    let moved = async {
                        loop {
                            glommio::timer::sleep(Duration::from_millis(r.config.raft_tick_ms))
                                .await;
                            let (_, now) = r.leadership(partition);
                            if local && now != 0 && now != target {
                                if !is_read {
                                    // A leader that handed over on purpose still answers
                                    // the write (done, or WrongNode: not applied): give it
                                    // that long before calling the outcome unknown.
                                    glommio::timer::sleep(HANDOVER_GRACE).await;
                                }
                                return now;
                            }
                        }
                    };
                    let forwarded =
                        async { Ok(r.links.forward(target, op.clone(), consistency).await) };
                    match futures_lite::future::or(forwarded, async { Err(moved.await) }).await {
                        Ok(Ok(Reply::Error(e))) if e.code == ErrorCode::WrongNode => {
                            hint = e.leader;
                            r.note_remote_leader(partition, e.leader);
                            // Follow a hint at once (a few times: two nodes with stale views
                            // must not bounce a request at full speed).
                            hops += 1;
                            if hint != 0 && hint != target && hops <= 3 {
                                continue;
                            }
                        }
                        Ok(Ok(reply)) => {
                            if !local {
                                r.note_remote_leader(partition, target);
                            }
                            return reply;
                        }
                        // Not sent (no link to it): ask elsewhere.
                        Ok(Err(_unsent)) => {
                            hint = 0;
                            r.note_remote_leader(partition, 0);
                        }
                        Err(now) if is_read => {
                            hint = now;
                            continue;
                        }
                        Err(now) => {
                            return Reply::error(
                                ErrorCode::OutcomeUnknown,
                                format!(
                                    "partition {partition}: leadership moved from node {target} to \
                                     node {now} while the write was in flight; it may or may not \
                                     have been applied"
                                ),
                            );
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return Reply::error(
                    ErrorCode::Unavailable,
                    format!(
                        "partition {partition}: no leader reachable within {}s",
                        LEADER_WAIT.as_secs()
                    ),
                );
            }
            // An election takes a few Raft ticks.
            let pause = r.config.raft_tick_ms.clamp(5, 100);
            glommio::timer::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// `WrongNode` for a client that routed by the topology: the leader known here and the
    /// current map, so it can route again without another round trip.
    async fn wrong_node_direct(self: &Rc<Self>, partition: u32, leader: u64) -> Reply {
        let mut e = wrong_node_error(partition, leader);
        // Boxed: the topology reads metadata through `cluster_op`, which led here.
        if let Reply::Topology(t) = Box::pin(super::topology::topology(self)).await {
            e.topology = Some(t);
        }
        Reply::Error(e)
    }

    pub(super) fn groups_here(&self) -> Done {
        match &self.cluster {
            Some(r) => Done::Groups(r.status(), r.counter_values()),
            None => Done::Groups(Vec::new(), Default::default()),
        }
    }

    /// Every core's groups, by partition, and the Raft counters summed over cores.
    pub async fn cluster_status(&self) -> Result<(Vec<GroupStatus>, CounterValues), Reply> {
        let tokens = self.forward_to_others(|| Work::ClusterStatus).await;
        let Done::Groups(mut groups, mut counters) = self.groups_here() else {
            unreachable!("groups_here answers Groups")
        };
        self.fan_in(tokens, |done| match done {
            Done::Groups(g, c) => {
                groups.extend(g);
                counters.add(&c);
                None
            }
            other => Some(other),
        })
        .await?;
        groups.sort_by_key(|g| g.partition);
        Ok((groups, counters))
    }

    /// Reads this replica's engine (a value on disk only is read back): one read, or a
    /// piece of a batch that only reads.
    async fn read_local(&self, op: Op) -> Reply {
        let now = now_ms();
        let Op::Batch(ops) = op else { return self.store.execute_reply(op, now).await };
        let mut replies = Vec::with_capacity(ops.len());
        for op in ops {
            replies.push(self.store.execute_reply(op, now).await);
        }
        Reply::Batch(replies)
    }

    /// The cluster's active expiry, on this core: keys found expired in partitions this node
    /// leads are proposed for removal, one entry per partition; the others are looked at
    /// again later (their leader removes them, or this node does if it comes to lead).
    pub fn cluster_sweep(self: &Rc<Self>, now: u64, budget: usize) {
        let Some(r) = self.cluster.as_ref() else { return };
        for (partition, keys) in r.due_removals(now, budget) {
            let r = r.clone();
            glommio::spawn_local(async move {
                let reply = r.propose_expiry(partition, &keys).await;
                if matches!(reply, Reply::Error(_)) {
                    // Not applied, or unknown: look again (a removal twice is a no-op).
                    r.expire_later(keys, now_ms());
                }
            })
            .detach();
        }
    }

    /// Raft messages from a peer: each to the core that owns its partition.
    pub async fn deliver_raft(&self, messages: Vec<(u32, Bytes)>) {
        let Some(r) = self.cluster.as_ref() else { return };
        let mut by_core: Vec<Vec<(u32, Bytes)>> = vec![Vec::new(); usize::from(self.cores)];
        for (p, m) in messages {
            by_core[usize::from(placement::core_of_partition(p, self.cores))].push((p, m));
        }
        for (core, messages) in by_core.into_iter().enumerate() {
            if messages.is_empty() {
                continue;
            }
            if core == usize::from(self.index) {
                r.deliver(messages);
            } else {
                let call = super::Call { token: u64::MAX, work: Work::Raft(messages) };
                // Raft resends what is lost; a full mesh drops rather than blocks the link.
                let _ = self.mesh.try_call(core as u16, call);
            }
        }
    }
}
