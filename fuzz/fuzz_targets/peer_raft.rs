//! Fuzz target: node-to-node frames with their Raft payloads, as a node takes them. Each frame
//! is decoded; each Raft message in it is parsed and stepped into a follower group (replica 2
//! of 1, 2, 3, with a few entries), then the group is driven as the node's driver does. No
//! input may panic outside the guarded step: `Group::step` refuses what raft-rs would abort on,
//! and should raft-rs still panic, the group is rebuilt from its store and goes on.
#![no_main]

use bytes::Bytes;
use corekv::cluster::group::{Group, GroupStore as _, Stepped, config};
use corekv::cluster::store::{FOUNDING_INDEX, Recovered, WalStore};
use corekv_schema::peer::{PeerMessage, decode};
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Message};

fn follower() -> Group<WalStore> {
    let f = FOUNDING_INDEX;
    let mut s = WalStore::new(4, vec![1, 2, 3], Recovered::default(), None);
    let entry = |index| Entry { index, term: 6, ..Default::default() };
    s.append(&[entry(f + 1), entry(f + 2), entry(f + 3)]).unwrap();
    s.set_hard_state(&HardState { term: 6, vote: 1, commit: f + 2, ..Default::default() }).unwrap();
    let mut c = config(2);
    c.applied = f;
    Group::new(4, &c, s).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Ok(PeerMessage::Raft { messages, .. }) = decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut g = follower();
    for (_, bytes) in messages {
        let Ok(m) = Message::parse_from_bytes(&bytes) else { continue };
        if let Stepped::Panicked(_) = g.step(m) {
            let store = g.into_store();
            let mut c = config(2);
            c.applied = FOUNDING_INDEX;
            g = Group::new(4, &c, store).expect("rebuilt from its store");
        }
        if g.has_ready()
            && let Ok(mut d) = g.drive()
        {
            // The driver's order (`group::Driven`): install, report persisted, then applied.
            let installed = d.snapshot.take().map(|snap| {
                let index = snap.get_metadata().index;
                g.store_mut().apply_snapshot(snap).expect("a checked snapshot installs");
                index
            });
            if let Some(n) = d.persist {
                g.persisted(n);
            }
            if let Some(last) = d.committed.last().map(|e| e.index).or(installed) {
                g.applied(last);
            }
        }
    }
});
