//! The production Raft driver under seeded simulation.
//!
//! Four nodes run the very code a core runs ([`Replicas`] and its [`replica::round`], over a
//! real [`Store`] with its write-ahead log in a temporary directory), and only the outside
//! is simulated: the links are [`Links::simulated`] queues carried by a seeded network that
//! drops, delays and so reorders frames, and cuts nodes off; the clock is a step counter
//! (one Raft tick per step); a node crashes between two rounds (its tasks stopped, nothing
//! closed) and restarts by recovering from its own log, as after `kill -9`. Followers keep
//! only a few applied entries, so one that fell behind is caught up by a snapshot, built and
//! installed by the production code.
//!
//! Three nodes found the cluster; the fourth starts with no group. Now and then a group is
//! given a new target (one of its nodes swapped for another, often one it had before), and
//! each step its leader takes the next step of `moves` toward it: learners, joint
//! consensus, leadership handed over, removed replicas tombstoned and emptied.
//!
//! Clients propose sets and compare-and-sets and ask for strong reads (ReadIndex, then the
//! replica's own engine) on a few keys, each through the node that thinks it leads the key's
//! partition, and record what they learned. Other keys are written with TTLs, and every
//! node sweeps as a core does: a leader proposes removing what expired by its clock.
//! Checked after every step:
//! - at most one leader per partition and term;
//! - a committed entry never changes or disappears: whatever a node has committed at an
//!   index is the entry every node commits there;
//! - equal state at equal applied index: a replica's keys of a partition (values, versions,
//!   expiries) and its membership are the same on every node that has applied the same index.
//!
//! After the weather calms down every move must finish, every partition must elect a leader
//! and commit a last write on each of its members, the nodes moved off a partition must hold
//! neither its group nor its keys, no node may still hold a key that expired long before,
//! and the client history must be accepted by the linearizability checker.
//! A failing seed is printed; `COREKV_SIM_SEED=N` replays it and `COREKV_SIM_SEEDS=N` runs
//! N seeds.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use corekv_schema::codec::{ErrorCode, Expected, Op, Reply, SetOp};
use corekv_schema::frame::{Limits, take_frame};
use corekv_schema::peer::{self, PeerMessage};
use glommio::task::JoinHandle;
use raft::eraftpb::ConfState;

use super::command;
use super::meta;
use super::moves::{self, Step};
use super::replica::{self, Replicas};
use super::transport::{Links, PEER_FRAME_BYTES_MAX, SnapshotAssembly};
use crate::config::{ClusterConfig, ConsistencyMode};
use crate::storage::store::Store;
use crate::storage::wal::{SyncMode, Wal};
use crate::storage::{ExpiryRule, MemEngine, Mutation};
use crate::testing::{Rng, seeds};

#[path = "../../tests/support/linearizable.rs"]
#[allow(dead_code)]
mod linearizable;
use linearizable::{Input, Operation, Output};

/// Nodes 1 to 3 found the cluster; node 4 starts with no group, and moves add it to groups
/// and remove others.
const NODES: u64 = 4;
const FOUNDERS: u64 = 3;
/// Data partitions; the metadata group is one more, on every node.
const PARTITIONS: u32 = 2;
const KEYS: u64 = 3;
/// Keys written with TTLs (not in the checked history: a key that expires is no register).
const TTL_KEYS: u64 = 3;
/// Simulated milliseconds per step: one Raft tick.
const STEP_MS: u64 = 100;
/// Small segments: the simulation writes little, and each node preallocates one.
const SEGMENT_BYTES: u64 = 1 << 20;
/// Applied entries a group keeps for followers: few, so that snapshots happen.
const ENTRIES_RETAINED: u64 = 2;
/// Ticks before a snapshot nobody acknowledged is sent again (the network here loses some).
const SNAPSHOT_STALL_TICKS: u32 = 20;

/// A frame in flight from one node to another.
struct Flight {
    at: u64,
    seq: u64,
    from: u64,
    to: u64,
    bytes: Vec<u8>,
}

/// A running node: its driver's state, its data, and its log's flusher task.
struct Up {
    replicas: Rc<Replicas>,
    store: Rc<Store>,
    flusher: JoinHandle<()>,
}

struct Node {
    id: u64,
    dir: PathBuf,
    election_tick: usize,
    up: Option<Up>,
}

/// A client operation waiting for its answer at `node`.
struct Pending {
    node: u64,
    /// The proposal's or the read ask's id.
    id: u64,
    read: bool,
    key: u64,
    input: Input,
    call: u64,
}

struct Sim {
    seed: u64,
    rng: Rng,
    step: u64,
    nodes: Vec<Node>,
    flights: Vec<Flight>,
    seq: u64,
    /// Nodes cut off from every other.
    cut: Vec<u64>,
    drop_percent: u64,
    delay_max: u64,
    next_value: u64,
    pending: Vec<Pending>,
    history: Vec<Operation>,
    /// The one leader seen per (partition, term).
    leaders: HashMap<(u32, u64), u64>,
    /// The term of the entry some node committed at (partition, index).
    committed: HashMap<(u32, u64), u64>,
    /// The state and membership some node held at (partition, applied index).
    states: HashMap<(u32, u64), (State, ConfState)>,
    /// Each group's target voters: moves change them, leaders step toward them.
    targets: BTreeMap<u32, Vec<u64>>,
    /// Moves started, and those that add a node back to a group it left.
    moves: u64,
    readds: u64,
    /// Every node each group's target named so far.
    had: BTreeMap<u32, Vec<u64>>,
    /// Snapshot pieces on their way, by (from, to).
    assemblies: HashMap<(u64, u64), SnapshotAssembly>,
    crashes: u64,
    /// Snapshots installed, by nodes since crashed too.
    snapshots: u64,
    /// Proposals whose replies nobody checks (TTL writes): (node, id).
    unchecked: Vec<(u64, u64)>,
    /// Expiry proposals: (node, id, the keys and versions to remove).
    sweeps: Vec<(u64, u64, Removals)>,
    /// Keys the leaders' expiry entries removed.
    expired: u64,
}

/// Keys to remove, with the versions they were seen expired at.
type Removals = Vec<(Bytes, u64)>;

/// A replica's keys of one partition: (key, version, expiry, value), in key order.
type State = Vec<(Bytes, u64, u64, Bytes)>;

fn key_bytes(key: u64) -> Bytes {
    Bytes::from(format!("k{key}"))
}

fn config(id: u64) -> ClusterConfig {
    let addr = |n: u64| SocketAddr::from(([127, 0, 0, 1], 7000 + n as u16));
    ClusterConfig {
        node: id,
        listen: addr(id),
        nodes: (1..=FOUNDERS).map(|n| (n, addr(n))).collect(),
        replication_factor: FOUNDERS as usize,
        raft_tick_ms: 100,
        plan_stall_s: crate::config::PLAN_STALL_S_DEFAULT,
        consistency: ConsistencyMode::Strong,
        bootstrap: id <= FOUNDERS,
        join: None,
        cluster_id: 1,
        peer_tls: None,
    }
}

/// Starts node `id` from what its directory holds, as a core does at boot.
async fn boot(id: u64, dir: &Path, election_tick: usize) -> Up {
    let mut engine = MemEngine::new().with_expiry(ExpiryRule::Logged);
    let (report, recovered) =
        super::store::recover(dir, &mut engine, PARTITIONS, false).expect("recovery");
    let wal = Wal::new(dir.to_path_buf(), SyncMode::Sync, SEGMENT_BYTES, report.next_segment);
    wal.open_existing(&report.kept).await.expect("open the log");
    let flusher = glommio::spawn_local(wal.clone().run()).detach();
    let store = Rc::new(Store::new(
        0,
        Box::new(engine),
        Some(wal),
        (report.checkpoint_seq, report.checkpoint_segments),
    ));
    let ids: Vec<u64> = (1..=NODES).collect();
    let replicas = Replicas::with_links(
        &config(id),
        PARTITIONS,
        0,
        1,
        recovered,
        store.clone(),
        Limits::DEFAULT,
        |waits, counters| Links::simulated(id, &ids, waits, counters),
        Some(election_tick),
    )
    .expect("replicas");
    replicas.shorten_for_simulation(ENTRIES_RETAINED, SNAPSHOT_STALL_TICKS);
    Up { replicas: Rc::new(replicas), store, flusher }
}

impl Sim {
    async fn new(seed: u64, root: &Path) -> Sim {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::new();
        for id in 1..=NODES {
            let dir = root.join(format!("node-{id}"));
            let election_tick = 10 + rng.below(10) as usize;
            let up = Some(boot(id, &dir, election_tick).await);
            nodes.push(Node { id, dir, election_tick, up });
        }
        Sim {
            seed,
            rng,
            step: 0,
            nodes,
            flights: Vec::new(),
            seq: 0,
            cut: Vec::new(),
            drop_percent: 0,
            delay_max: 1,
            next_value: 1,
            pending: Vec::new(),
            history: Vec::new(),
            leaders: HashMap::new(),
            committed: HashMap::new(),
            states: HashMap::new(),
            crashes: 0,
            snapshots: 0,
            unchecked: Vec::new(),
            sweeps: Vec::new(),
            expired: 0,
            targets: (0..=PARTITIONS).map(|p| (p, (1..=FOUNDERS).collect())).collect(),
            moves: 0,
            readds: 0,
            had: BTreeMap::new(),
            assemblies: HashMap::new(),
        }
    }

    fn up(&self, id: u64) -> Option<&Up> {
        self.nodes[(id - 1) as usize].up.as_ref()
    }

    /// The running node that thinks it leads `partition`, if any.
    fn leader_of(&self, partition: u32) -> Option<u64> {
        (1..=NODES).find(|&n| self.up(n).is_some_and(|u| u.replicas.leadership(partition).0))
    }

    /// One step: frames due are delivered, clients act, every running node runs one round
    /// of its driver with one tick, answers are collected, and the invariants checked.
    async fn step(&mut self, client_percent: u64) {
        self.step += 1;
        self.deliver();
        if self.rng.percent(client_percent) {
            self.invoke();
        }
        if self.rng.percent(client_percent / 2) {
            self.invoke_ttl();
        }
        self.sweep();
        self.step_moves();
        for n in 0..self.nodes.len() {
            let Some(up) = &self.nodes[n].up else { continue };
            let r = up.replicas.clone();
            replica::round(&r, true).await.unwrap_or_else(|e| self.fail(&format!("round: {e}")));
            self.carry(self.nodes[n].id);
        }
        self.collect().await;
        self.check().await;
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {}, step {}: {what} (COREKV_SIM_SEED={} replays it)",
            self.seed, self.step, self.seed
        )
    }

    /// Takes what node `from` queued for each peer and puts it on the network.
    fn carry(&mut self, from: u64) {
        let Some(up) = self.up(from) else { return };
        let mut out = Vec::new();
        for to in (1..=NODES).filter(|&to| to != from) {
            let bytes = up.replicas.links.drain(to);
            if !bytes.is_empty() {
                out.push((to, bytes));
            }
        }
        for (to, bytes) in out {
            if self.rng.percent(self.drop_percent) {
                continue;
            }
            let at = self.step + 1 + self.rng.below(self.delay_max);
            self.seq += 1;
            self.flights.push(Flight { at, seq: self.seq, from, to, bytes });
        }
    }

    /// Delivers the frames due now, in (due step, send order): random delays reorder them.
    fn deliver(&mut self) {
        self.flights.sort_by_key(|f| (f.at, f.seq));
        let due = self.flights.partition_point(|f| f.at <= self.step);
        for f in self.flights.drain(..due).collect::<Vec<_>>() {
            if self.cut.contains(&f.from) || self.cut.contains(&f.to) {
                continue;
            }
            let Some(up) = self.up(f.to).map(|u| u.replicas.clone()) else { continue };
            let mut buf = BytesMut::from(&f.bytes[..]);
            while let Ok(Some(frame)) = take_frame(&mut buf, PEER_FRAME_BYTES_MAX) {
                match peer::decode(&frame) {
                    Ok(PeerMessage::Raft { messages, .. }) => up.deliver(messages),
                    Ok(PeerMessage::SnapshotChunk(piece)) => {
                        let joined = self.assemblies.entry((f.from, f.to)).or_default().take(piece);
                        if let Ok(Some(whole)) = joined {
                            up.deliver([whole]);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => self.fail(&format!("a frame the links made does not decode: {e}")),
                }
            }
        }
    }

    /// A client starts an operation on a random key, through the node that thinks it leads
    /// the key's partition (a node that does not refuses; that is recorded as no effect).
    fn invoke(&mut self) {
        let key = self.rng.below(KEYS);
        let partition = meta::partition_of(&key_bytes(key), PARTITIONS);
        let node = match self.leader_of(partition) {
            Some(n) => n,
            None => 1 + self.rng.below(NODES),
        };
        let Some(up) = self.up(node) else { return };
        let r = up.replicas.clone();
        let call = 2 * self.step;
        let (read, input, id) = match self.rng.below(10) {
            0..=3 => (true, Input::Get, r.submit_read(partition)),
            choice => {
                let new = self.next_value;
                self.next_value += 1;
                let (input, op) = if choice <= 6 {
                    (Input::Set(new), Op::set(key_bytes(key), new.to_string()))
                } else {
                    let expected = self.rng.below(self.next_value);
                    let op = Op::Cas {
                        key: key_bytes(key),
                        expected: Expected::Value(Bytes::from(expected.to_string())),
                        new_value: Bytes::from(new.to_string()),
                        ttl_ms: 0,
                    };
                    (Input::Cas { expected, new }, op)
                };
                // The stamp is the simulation's clock: entries apply the same everywhere.
                let data = command::encode(self.stamp(), &op);
                (false, input, r.submit(partition, data))
            }
        };
        self.pending.push(Pending { node, id, read, key, input, call });
    }

    /// The leaders' clock: every node's, here.
    fn stamp(&self) -> u64 {
        1_000_000 + STEP_MS * self.step
    }

    /// A write with a TTL (or one keeping it) on a TTL key, through its partition's leader.
    fn invoke_ttl(&mut self) {
        let key = Bytes::from(format!("t{}", self.rng.below(TTL_KEYS)));
        let partition = meta::partition_of(&key, PARTITIONS);
        let Some(node) = self.leader_of(partition) else { return };
        let keep_ttl = self.rng.percent(30);
        let ttl_ms = if keep_ttl { 0 } else { STEP_MS * (5 + self.rng.below(35)) };
        let value = Bytes::from(self.rng.below(1000).to_string());
        let op = Op::Set(SetOp { key, value, ttl_ms, keep_ttl, ..Default::default() });
        let r = self.up(node).expect("leader up").replicas.clone();
        let id = r.submit(partition, command::encode(self.stamp(), &op));
        self.unchecked.push((node, id));
    }

    /// Every node's active expiry, as a core's sweep does it: the leader of a partition
    /// proposes removing its keys expired by the (simulated) clock.
    fn sweep(&mut self) {
        let stamp = self.stamp();
        for n in 1..=NODES {
            let Some(up) = self.up(n) else { continue };
            let r = up.replicas.clone();
            for (partition, keys) in r.due_removals(stamp, 16) {
                let id = r.submit(partition, command::encode_expiry(stamp, &keys));
                self.sweeps.push((n, id, keys));
            }
        }
    }

    /// Starts moving a random group: one of its target voters is replaced by a node that is
    /// not one (a move under way may be redirected: each step is decided afresh).
    fn start_move(&mut self) {
        let p = self.rng.below(u64::from(PARTITIONS) + 1) as u32;
        let mut target = self.targets[&p].clone();
        let out = self.rng.below(target.len() as u64) as usize;
        // Often a node the group had before: it comes back as a new replica.
        let candidates: Vec<u64> = (1..=NODES).filter(|n| !target.contains(n)).collect();
        let new = candidates[self.rng.below(candidates.len() as u64) as usize];
        let had = self.had.entry(p).or_insert_with(|| (1..=FOUNDERS).collect());
        if had.contains(&new) {
            self.readds += 1;
        }
        had.push(new);
        target[out] = new;
        target.sort_unstable();
        self.targets.insert(p, target);
        self.moves += 1;
    }

    /// Every group's leader takes the next step toward its target, as a move's driver does.
    fn step_moves(&mut self) {
        for (p, target) in self.targets.clone() {
            let Some(leader) = self.leader_of(p) else { continue };
            let r = self.up(leader).expect("leader up").replicas.clone();
            let Some(view) = r.move_view(p) else { continue };
            match moves::next_step(leader, &view, &target) {
                Step::Propose(change) => {
                    let id = r.submit_membership(p, change);
                    self.unchecked.push((leader, id));
                }
                Step::Transfer(to) => r.transfer_leader(p, to),
                Step::Done | Step::Wait(_) => {}
            }
        }
    }

    /// Whether every group's leader has applied its target membership.
    fn moves_done(&self) -> bool {
        self.targets.iter().all(|(p, target)| {
            self.leader_of(*p).is_some_and(|l| {
                let view = self.up(l).and_then(|u| u.replicas.move_view(*p));
                view.is_some_and(|v| moves::next_step(l, &v, target) == Step::Done)
            })
        })
    }

    /// Records the answers that came this step.
    async fn collect(&mut self) {
        let stamp = self.stamp();
        for (n, id) in std::mem::take(&mut self.unchecked) {
            if let Some(up) = self.up(n)
                && up.replicas.take_reply(id).is_none()
            {
                self.unchecked.push((n, id));
            }
        }
        for (n, id, keys) in std::mem::take(&mut self.sweeps) {
            let Some(up) = self.up(n) else { continue };
            match up.replicas.take_reply(id) {
                None => self.sweeps.push((n, id, keys)),
                Some(Reply::Batch(removed)) => {
                    let gone = removed.iter().filter(|r| matches!(r, Reply::Deleted { .. }));
                    self.expired += gone.count() as u64;
                }
                // Not applied: look again, as the core's sweep does.
                Some(_) => up.replicas.expire_later(keys, stamp),
            }
        }
        let ret = 2 * self.step + 1;
        let mut still = Vec::new();
        for p in std::mem::take(&mut self.pending) {
            let Some(up) = self.up(p.node) else {
                // Its node crashed: the outcome is unknown.
                self.unknown(&p);
                continue;
            };
            let output = if p.read {
                match up.replicas.take_read(partition_of_key(p.key), p.id) {
                    None => {
                        still.push(p);
                        continue;
                    }
                    Some(Err(_)) => None,
                    Some(Ok(())) => {
                        let got = up.store.execute_reply(Op::get(key_bytes(p.key)), 0).await;
                        Some(match got {
                            Reply::Value { value, .. } => {
                                let text = String::from_utf8_lossy(&value);
                                Output::Value(Some(text.parse().expect("a number")))
                            }
                            Reply::Error(e) if e.code == ErrorCode::NotFound => Output::Value(None),
                            other => self.fail(&format!("a read answered {other:?}")),
                        })
                    }
                }
            } else {
                match up.replicas.take_reply(p.id) {
                    None => {
                        still.push(p);
                        continue;
                    }
                    Some(Reply::Written { .. }) => Some(match p.input {
                        Input::Cas { .. } => Output::Swapped(true),
                        _ => Output::Written,
                    }),
                    Some(Reply::Error(e)) if e.code == ErrorCode::ConditionFailed => {
                        Some(Output::Swapped(false))
                    }
                    Some(Reply::Error(e)) if e.code == ErrorCode::OutcomeUnknown => {
                        Some(Output::Unknown)
                    }
                    // WrongNode, Unavailable (another entry took its index): not applied.
                    Some(Reply::Error(_)) => None,
                    Some(other) => self.fail(&format!("a write answered {other:?}")),
                }
            };
            if let Some(output) = output {
                let ret = if output == Output::Unknown { u64::MAX } else { ret };
                let op = Operation { key: p.key, input: p.input, output, call: p.call, ret };
                self.history.push(op);
            }
        }
        self.pending = still;
    }

    fn unknown(&mut self, p: &Pending) {
        if !p.read {
            let (key, input, call) = (p.key, p.input, p.call);
            let op = Operation { key, input, output: Output::Unknown, call, ret: u64::MAX };
            self.history.push(op);
        }
    }

    /// The invariants of the module doc, over every running node.
    async fn check(&mut self) {
        for n in 1..=NODES {
            let Some(up) = self.up(n) else { continue };
            let r = up.replicas.clone();
            let store = up.store.clone();
            for g in r.status() {
                let p = g.partition;
                if g.leader == n {
                    let seen = *self.leaders.entry((p, g.term)).or_insert(n);
                    if seen != n {
                        self.fail(&format!(
                            "nodes {seen} and {n} both lead {p} in term {}",
                            g.term
                        ));
                    }
                }
                for index in r.first_index(p).max(1)..=g.commit {
                    let Some(term) = r.term_of(p, index) else { continue };
                    let first = *self.committed.entry((p, index)).or_insert(term);
                    if first != term {
                        self.fail(&format!(
                            "partition {p} index {index}: committed in term {first}, node {n} \
                             committed term {term}"
                        ));
                    }
                }
                if super::store::members(&g.conf).is_empty() {
                    // Made for a partition this node was added to; nothing reached it yet.
                    continue;
                }
                let state = (partition_state(&store, p).await, sorted(&g.conf));
                let first = self.states.entry((p, g.applied)).or_insert_with(|| state.clone());
                if *first != state {
                    let first = first.clone();
                    self.fail(&format!(
                        "partition {p} at applied index {}: node {n} holds {state:?}, another \
                         node held {first:?}",
                        g.applied
                    ));
                }
            }
        }
    }

    /// Stops node `id` between two rounds, as `kill -9` would: nothing is closed.
    async fn crash(&mut self, id: u64) {
        if let Some(up) = self.nodes[(id - 1) as usize].up.take() {
            up.flusher.cancel();
            self.crashes += 1;
            self.snapshots += up.replicas.counter_values().snapshots_installed;
        }
    }

    async fn restart(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if node.up.is_none() {
            node.up = Some(boot(id, &node.dir, node.election_tick).await);
        }
    }

    /// Cuts `nodes` off (and reconnects everyone else).
    fn set_cut(&mut self, nodes: Vec<u64>) {
        self.cut = nodes;
        for n in 1..=NODES {
            let Some(up) = self.up(n) else { continue };
            for peer in (1..=NODES).filter(|&p| p != n) {
                let connected = !self.cut.contains(&n) && !self.cut.contains(&peer);
                up.replicas.links.set_up(peer, connected);
            }
        }
    }
}

/// What one seed's run went through, summed over seeds to show the faults happened.
#[derive(Default, Debug)]
struct Totals {
    answered: usize,
    expired: u64,
    crashes: u64,
    snapshots: u64,
    terms: usize,
    moves: u64,
    readds: u64,
}

async fn run(seed: u64) -> Totals {
    let root = tempfile::tempdir().expect("temp dir");
    let mut sim = Sim::new(seed, root.path()).await;
    sim.drop_percent = 10;
    sim.delay_max = 4;
    for _ in 0..4 {
        let anyone = 1 + sim.rng.below(NODES);
        let p = sim.rng.below(u64::from(PARTITIONS)) as u32;
        match sim.rng.below(10) {
            // Cut off a leader (or anyone), so that elections happen.
            0..=3 => {
                let victim = sim.leader_of(p).unwrap_or(anyone);
                sim.set_cut(vec![victim]);
            }
            // Crash a leader (or anyone); it restarts from its log later in this phase.
            4..=7 => {
                let victim = sim.leader_of(p).unwrap_or(anyone);
                sim.set_cut(Vec::new());
                sim.crash(victim).await;
            }
            _ => sim.set_cut(Vec::new()),
        }
        let steps = 40 + sim.rng.below(40);
        for i in 0..steps {
            if i == steps / 2 {
                for n in 1..=NODES {
                    sim.restart(n).await;
                }
                sim.set_cut(sim.cut.clone());
            }
            if sim.rng.percent(2) {
                sim.start_move();
            }
            sim.step(60).await;
        }
    }
    // Calm: everyone up and connected, nothing lost. Every partition elects a leader and
    // commits a last write, which every node applies.
    for n in 1..=NODES {
        sim.restart(n).await;
    }
    sim.set_cut(Vec::new());
    sim.drop_percent = 0;
    sim.delay_max = 1;
    for _ in 0..60 {
        sim.step(20).await;
    }
    // Every move finishes, and the replicas it removed learn it and let go.
    let mut settle = 0;
    while !sim.moves_done() {
        settle += 1;
        if settle > 600 {
            let status: Vec<_> =
                (1..=NODES).map(|n| sim.up(n).map(|u| u.replicas.status())).collect();
            sim.fail(&format!("moves to {:?} never finished; groups: {status:?}", sim.targets));
        }
        sim.step(0).await;
    }
    for _ in 0..2 * super::group::SILENT_TICKS {
        sim.step(0).await;
    }
    let mut marks = BTreeMap::new();
    for p in 0..PARTITIONS {
        let leader = sim.leader_of(p).unwrap_or_else(|| sim.fail(&format!("no leader of {p}")));
        let r = sim.up(leader).expect("leader up").replicas.clone();
        let key = key_of_partition(p);
        let op = Op::set(key.clone(), "done");
        marks.insert(p, (leader, r.submit(p, command::encode(2_000_000, &op)), key));
    }
    for _ in 0..40 {
        sim.step(0).await;
    }
    for (p, (leader, id, key)) in marks {
        let r = sim.up(leader).expect("leader up").replicas.clone();
        match r.take_reply(id) {
            Some(Reply::Written { .. }) => {}
            other => sim.fail(&format!("partition {p}: the last write answered {other:?}")),
        }
        for n in 1..=NODES {
            let up = sim.up(n).expect("up");
            if !sim.targets[&p].contains(&n) {
                let (held, has) = (partition_state(&up.store, p).await, up.replicas.has_group(p));
                if has || !held.is_empty() {
                    sim.fail(&format!(
                        "node {n} was moved off partition {p} and still holds its group \
                         ({has}) or keys: {held:?}"
                    ));
                }
                continue;
            }
            let store = up.store.clone();
            if store.engine.borrow().version_of(&key, 0) == 0 {
                let status: Vec<_> =
                    (1..=NODES).map(|n| sim.up(n).map(|u| u.replicas.status())).collect();
                sim.fail(&format!(
                    "node {n} never applied partition {p}'s last write; groups: {status:?}"
                ));
            }
        }
    }
    // Only the log removes expired keys, and it does: what expired a while ago is gone from
    // every node (a key handed back waits a second; a removal needs a commit).
    let long_ago = sim.stamp() - 3_000;
    for n in 1..=NODES {
        let store = sim.up(n).expect("up").store.clone();
        let lingering: Vec<_> = store
            .engine
            .borrow()
            .snapshot(0)
            .iter()
            .filter_map(|m| match m {
                Mutation::Put { expires_at_ms, .. } | Mutation::Index { expires_at_ms, .. }
                    if *expires_at_ms != 0 && *expires_at_ms <= long_ago =>
                {
                    Some(Bytes::copy_from_slice(m.key()))
                }
                _ => None,
            })
            .collect();
        if !lingering.is_empty() {
            sim.fail(&format!("node {n} still holds keys expired long ago: {lingering:?}"));
        }
    }
    sim.pending.clear();
    if let Err((key, ops)) = linearizable::check(&sim.history) {
        sim.fail(&format!("key {key}: not linearizable: {ops:?}"));
    }
    let crashes = sim.crashes;
    for n in 1..=NODES {
        sim.crash(n).await;
    }
    let answered = sim.history.iter().filter(|o| o.output != Output::Unknown).count();
    if answered < 10 {
        sim.fail(&format!("only {answered} operations answered"));
    }
    let expired = sim.expired;
    let (moves, readds) = (sim.moves, sim.readds);
    let terms = sim.leaders.len();
    Totals { answered, expired, crashes, snapshots: sim.snapshots, terms, moves, readds }
}

/// What a replica holds of partition `p`: every key (expired or not) with its version,
/// expiry and value, in key order. Where a record lives in the log is not state.
async fn partition_state(store: &Store, p: u32) -> State {
    let held: Vec<(Bytes, u64, u64)> = store
        .engine
        .borrow()
        .snapshot(0)
        .iter()
        .filter(|m| !matches!(m, Mutation::Clock { .. }))
        .filter(|m| meta::partition_of(m.key(), PARTITIONS) == p)
        .map(|m| match m {
            Mutation::Put { version, expires_at_ms, .. }
            | Mutation::Index { version, expires_at_ms, .. } => {
                (Bytes::copy_from_slice(m.key()), *version, *expires_at_ms)
            }
            other => panic!("a snapshot holds only puts and index records: {other:?}"),
        })
        .collect();
    let mut state = Vec::new();
    for (key, version, expires) in held {
        // Time 0: nothing counts as expired, and under the logged rule a read removes nothing.
        let value = store.execute_reply(Op::get(key.clone()), 0).await;
        let Reply::Value { value, .. } = value else { panic!("{key:?} unreadable: {value:?}") };
        state.push((key, version, expires, value));
    }
    state.sort();
    state
}

/// A membership in a canonical order (raft-rs lists members in hash order).
fn sorted(conf: &ConfState) -> ConfState {
    let mut c = conf.clone();
    for ids in [&mut c.voters, &mut c.learners, &mut c.voters_outgoing, &mut c.learners_next] {
        ids.sort_unstable();
    }
    c
}

fn partition_of_key(key: u64) -> u32 {
    meta::partition_of(&key_bytes(key), PARTITIONS)
}

/// A key of partition `p` that no client op uses.
fn key_of_partition(p: u32) -> Bytes {
    (0..)
        .map(|i| Bytes::from(format!("mark-{i}")))
        .find(|k| meta::partition_of(k, PARTITIONS) == p)
        .expect("some key")
}

#[test]
fn the_production_driver_stays_safe_under_faults_and_converges() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("COREKV_SIM_LOG"))
        .with_test_writer()
        .try_init();
    let count = std::env::var("COREKV_SIM_SEEDS").ok().and_then(|s| s.parse().ok());
    let seeds = seeds("COREKV_SIM_SEED", count.unwrap_or(100));
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let runs = seeds.len();
            let mut all = Totals::default();
            for seed in seeds {
                let t = run(seed).await;
                all.answered += t.answered;
                all.expired += t.expired;
                all.crashes += t.crashes;
                all.snapshots += t.snapshots;
                all.terms += t.terms;
                all.moves += t.moves;
                all.readds += t.readds;
            }
            eprintln!("production driver simulation, {runs} seeds: {all:?}");
            // The weather did happen: leaders changed, nodes crashed, followers needed
            // snapshots (over many seeds; one replayed seed need not show all).
            if runs >= 20 {
                assert!(all.crashes > 0 && all.snapshots > 0 && all.expired > 0, "{all:?}");
                assert!(all.moves > runs as u64 && all.readds > 0, "{all:?}");
                assert!(all.terms > runs * PARTITIONS as usize * 2, "{all:?}");
            }
        })
        .expect("executor")
        .join()
        .expect("simulation");
}
