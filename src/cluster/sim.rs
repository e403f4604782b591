//! Deterministic simulation of the Raft driver: several nodes, several groups each, over a
//! seeded network that drops, delays and reorders messages and cuts nodes off, then heals.
//!
//! Checked throughout: at most one leader per group and term (election safety), and every
//! node applies the same command at the same index (state machine safety). Checked after
//! healing: every group elects a leader, a new command commits, and every node has applied
//! the same commands. A failing seed is printed and reproduces the run exactly. raft-rs draws
//! its election timeouts from an RNG that cannot be seeded, so here each replica's timeout is
//! fixed, drawn from the seed, so that candidates do compete.

use std::collections::{BTreeMap, HashMap};

use raft::eraftpb::{ConfState, Message};
use raft::storage::MemStorage;

use super::group::{self, Group, GroupStore as _};
use crate::testing::{Rng, seeds};

struct Flight {
    at: u64,
    seq: u64,
    partition: u32,
    message: Message,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    nodes: Vec<u64>,
    groups: BTreeMap<(u64, u32), Group<MemStorage>>,
    flights: Vec<Flight>,
    /// Nodes cut off from every other.
    cut: Vec<u64>,
    drop_percent: u64,
    delay_max: u64,
    /// The one leader seen per (partition, term).
    leaders: HashMap<(u32, u64), u64>,
    /// The command applied at (partition, index), by whichever node applied it first.
    chosen: HashMap<(u32, u64), Vec<u8>>,
    /// Commands each node applied, per partition, in order.
    applied: BTreeMap<(u64, u32), Vec<Vec<u8>>>,
    proposals: u64,
}

impl Sim {
    fn new(seed: u64, nodes: u64, partitions: u32) -> Sim {
        let ids: Vec<u64> = (1..=nodes).collect();
        let mut rng = Rng::new(seed);
        let mut groups = BTreeMap::new();
        for &id in &ids {
            for p in 0..partitions {
                let mut config = group::config(id);
                config.min_election_tick = 10 + rng.below(10) as usize;
                config.max_election_tick = config.min_election_tick + 1;
                let store = MemStorage::new_with_conf_state(ConfState::from((ids.clone(), vec![])));
                groups.insert((id, p), Group::new(p, &config, store).expect("group"));
            }
        }
        Sim {
            rng,
            now: 0,
            seq: 0,
            nodes: ids,
            groups,
            flights: Vec::new(),
            cut: Vec::new(),
            drop_percent: 0,
            delay_max: 1,
            leaders: HashMap::new(),
            chosen: HashMap::new(),
            applied: BTreeMap::new(),
            proposals: 0,
        }
    }

    fn step_tick(&mut self, propose_percent: u64) {
        self.now += 1;
        for g in self.groups.values_mut() {
            g.tick();
        }
        // Deliver what is due, in (due time, send order): random delays reorder.
        self.flights.sort_by_key(|f| (f.at, f.seq));
        let due = self.flights.partition_point(|f| f.at <= self.now);
        for f in self.flights.drain(..due).collect::<Vec<_>>() {
            let (from, to) = (f.message.from, f.message.to);
            if self.cut.contains(&from) || self.cut.contains(&to) {
                continue;
            }
            if let Some(g) = self.groups.get_mut(&(to, f.partition)) {
                // A message from an older term or for a compacted index is refused: normal.
                let _ = g.step(f.message);
                // A step can make a leader (votes counted) that steps down before the next
                // drive: look now.
                self.check_leader(to, f.partition);
            }
        }
        if self.rng.percent(propose_percent) {
            let partitions = self.groups.keys().map(|k| k.1).max().unwrap_or(0) + 1;
            let p = self.rng.below(u64::from(partitions)) as u32;
            // The first node that thinks it leads takes it, a deposed one in a minority too.
            let leader = self.nodes.iter().copied().find(|&n| self.groups[&(n, p)].is_leader());
            if let Some(n) = leader {
                self.proposals += 1;
                let data = format!("p{p}-c{}", self.proposals).into_bytes();
                let _ = self.groups.get_mut(&(n, p)).unwrap().propose(data);
            }
        }
        self.drive_all();
    }

    fn drive_all(&mut self) {
        let keys: Vec<(u64, u32)> = self.groups.keys().copied().collect();
        for (node, p) in keys {
            let g = self.groups.get_mut(&(node, p)).unwrap();
            let mut driven = g.drive().expect("drive");
            // Nothing compacts a log here, so no snapshot arrives; if one did, memory holds it
            // at once, as the contract asks (data, then the store's point).
            if let Some(snapshot) = driven.snapshot.take() {
                g.store_mut().apply_snapshot(snapshot).expect("snapshot");
            }
            // Memory is durable at once: finish the round the way a core does after its
            // fdatasync, and take what that makes ready (a leader's commits).
            while let Some(number) = driven.persist {
                g.persisted(number);
                let more = g.drive().expect("drive");
                driven.messages.append(&mut driven.after_persist);
                driven.after_persist = more.after_persist;
                driven.messages.extend(more.messages);
                driven.committed.extend(more.committed);
                driven.persist = more.persist;
            }
            driven.messages.append(&mut driven.after_persist);
            if let Some(last) = driven.committed.last() {
                g.applied(last.index);
            }
            self.check_leader(node, p);
            for m in driven.messages {
                if self.rng.percent(self.drop_percent) {
                    continue;
                }
                let at = self.now + 1 + self.rng.below(self.delay_max);
                self.seq += 1;
                self.flights.push(Flight { at, seq: self.seq, partition: p, message: m });
            }
            for e in driven.committed {
                // A new leader's first entry carries no command.
                if e.data.is_empty() {
                    continue;
                }
                let chosen = self.chosen.entry((p, e.index)).or_insert_with(|| e.data.to_vec());
                assert_eq!(
                    chosen[..],
                    e.data[..],
                    "partition {p} index {}: node {node} applied another command",
                    e.index
                );
                self.applied.entry((node, p)).or_default().push(e.data.to_vec());
            }
        }
    }

    /// Election safety: one leader per partition and term, ever.
    fn check_leader(&mut self, node: u64, p: u32) {
        let g = &self.groups[&(node, p)];
        if g.is_leader() {
            let (term, _) = g.leader();
            let seen = *self.leaders.entry((p, term)).or_insert(node);
            assert_eq!(seen, node, "two leaders of partition {p} in term {term}");
        }
    }

    fn leader_of(&self, p: u32) -> Option<u64> {
        self.nodes.iter().copied().find(|&n| self.groups[&(n, p)].is_leader())
    }
}

fn run(seed: u64) {
    const PARTITIONS: u32 = 3;
    let mut sim = Sim::new(seed, 3, PARTITIONS);
    // Rough weather: lost, late and reordered messages, and a node cut off now and then.
    sim.drop_percent = 10;
    sim.delay_max = 4;
    for _ in 0..6 {
        // Mostly the leader of some partition, so that elections happen; sometimes anyone.
        let p = sim.rng.below(u64::from(PARTITIONS)) as u32;
        let anyone = sim.nodes[sim.rng.below(sim.nodes.len() as u64) as usize];
        sim.cut = match sim.rng.below(10) {
            0..=5 => vec![sim.leader_of(p).unwrap_or(anyone)],
            6 | 7 => vec![anyone],
            _ => Vec::new(),
        };
        let ticks = 150 + sim.rng.below(150);
        for _ in 0..ticks {
            sim.step_tick(30);
        }
    }
    // Healed: a calm network. Every group must elect a leader and commit a new command.
    sim.cut.clear();
    sim.drop_percent = 0;
    sim.delay_max = 2;
    for _ in 0..300 {
        sim.step_tick(20);
    }
    for p in 0..PARTITIONS {
        let leader = sim.leader_of(p).unwrap_or_else(|| panic!("seed {seed}: no leader of {p}"));
        let marker = format!("final-{p}").into_bytes();
        sim.groups.get_mut(&(leader, p)).unwrap().propose(marker.clone()).unwrap();
    }
    for _ in 0..300 {
        sim.step_tick(0);
    }
    for p in 0..PARTITIONS {
        let logs: Vec<&Vec<Vec<u8>>> = sim.nodes.iter().map(|&n| &sim.applied[&(n, p)]).collect();
        for log in &logs[1..] {
            assert_eq!(*log, logs[0], "seed {seed}: partition {p} nodes applied different logs");
        }
        let marker = format!("final-{p}").into_bytes();
        assert!(logs[0].contains(&marker), "seed {seed}: partition {p} lost its final command");
    }
    // Progress through the weather, not just after it: commands committed in every partition.
    for p in 0..PARTITIONS {
        let committed = sim.chosen.keys().filter(|(q, _)| *q == p).count();
        assert!(committed >= 20, "seed {seed}: partition {p} committed only {committed}");
    }
    let terms = sim.leaders.len();
    assert!(terms > PARTITIONS as usize, "seed {seed}: no leader ever changed ({terms} terms)");
}

#[test]
fn raft_groups_stay_safe_and_converge_over_a_lossy_network() {
    for seed in seeds("COREKV_SIM_SEED", 12) {
        eprintln!("raft simulation seed {seed} (COREKV_SIM_SEED={seed} reruns it)");
        run(seed);
    }
}
