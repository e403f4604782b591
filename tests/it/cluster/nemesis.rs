//! The nemesis: clients run strong operations while nodes are killed, paused and cut off;
//! the history must be linearizable.

use super::netns::Net;
use super::*;

/// Concurrent get/set/compare-and-set on a few keys while a nemesis kills and restarts,
/// pauses and resumes, and cuts off and reconnects nodes; the history must be linearizable.
/// `COREKV_NEMESIS_SECS` makes the run longer (default 8 s); `COREKV_TEST_SEED` replays one.
#[test]
fn history_under_nemesis_is_linearizable() {
    use crate::linearizable::Operation;
    let mut rng = crate::harness::Rng::seeded("history_under_nemesis_is_linearizable");
    let secs: u64 =
        std::env::var("COREKV_NEMESIS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut c = Cluster::start_on(3, Some(Net::new(3)));
    c.wait_writable();
    let net = c.net.as_ref().unwrap();
    let addrs: Vec<std::net::SocketAddr> = (1..=3)
        .map(|i| format!("{}:{}", net.ip(i), crate::harness::NETNS_NATIVE_PORT).parse().unwrap())
        .collect();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(Vec::<Operation>::new()));
    let addrs = Arc::new(Mutex::new(addrs));
    let clients: Vec<_> = (0..4u64)
        .map(|client| {
            let rng = crate::harness::Rng(rng.next_u64());
            let (stop, history, addrs) = (stop.clone(), history.clone(), addrs.clone());
            std::thread::spawn(move || run_client(client, rng, started, &stop, &history, &addrs))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut faults = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(rng.range(300, 1000)));
        let victim = rng.range(1, 3) as usize;
        let hold = Duration::from_millis(rng.range(1500, 3000));
        let pid = c.node(victim).pid().to_string();
        // Every kind in turn (kill, pause, cut), so even a short run has each of them.
        match faults.len() % 3 {
            0 => {
                faults.push(format!("kill -9 node {victim}"));
                c.kill9(victim);
                std::thread::sleep(hold);
                c.boot(victim);
            }
            1 => {
                faults.push(format!("pause node {victim}"));
                assert!(
                    std::process::Command::new("kill")
                        .args(["-STOP", &pid])
                        .status()
                        .unwrap()
                        .success()
                );
                std::thread::sleep(hold);
                assert!(
                    std::process::Command::new("kill")
                        .args(["-CONT", &pid])
                        .status()
                        .unwrap()
                        .success()
                );
            }
            _ => {
                faults.push(format!("cut off node {victim}"));
                let net = c.net.as_ref().unwrap();
                net.set_cable(victim, false);
                std::thread::sleep(hold);
                net.set_cable(victim, true);
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|t| t.join().unwrap());
    check_history(&history.lock().unwrap(), &faults);
}

/// One client of a nemesis run: strong get/set/compare-and-set on two keys, through the nodes
/// in `addrs` in turn (moving on when one fails), each operation recorded with its outcome.
pub(super) fn run_client(
    client: u64,
    mut rng: crate::harness::Rng,
    started: Instant,
    stop: &AtomicBool,
    history: &Mutex<Vec<crate::linearizable::Operation>>,
    addrs: &Mutex<Vec<std::net::SocketAddr>>,
) {
    use crate::linearizable::{Input, Operation, Output};
    let now = || started.elapsed().as_nanos() as u64;
    let mut node = client as usize;
    let mut wire: Option<crate::harness::Wire> = None;
    let mut seen: Vec<u64> = vec![0; 3];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let w = match wire.as_mut() {
            Some(w) => w,
            None => {
                let addr = {
                    let addrs = addrs.lock().unwrap();
                    addrs[node % addrs.len()]
                };
                match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(_) => wire.insert(crate::harness::Wire::connect(addr)),
                    Err(_) => {
                        node += 1;
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
        };
        let key = rng.range(0, 2);
        let name = format!("lin-{key}");
        n += 1;
        let value = client * 1_000_000 + n;
        let roll = rng.range(0, 9);
        let (input, op) = if roll < 4 {
            (Input::Get, Op::get(name))
        } else if roll < 8 {
            (Input::Set(value), Op::set(name, value.to_string()))
        } else {
            let expected = seen[key as usize];
            let cas = Op::Cas {
                key: b(&name),
                expected: Expected::Value(b(&expected.to_string())),
                new_value: b(&value.to_string()),
                ttl_ms: 0,
            };
            (Input::Cas { expected, new: value }, cas)
        };
        let call = now();
        let reply = w.try_call_with(op, Consistency::Strong);
        let ret = now();
        let output = match (&input, reply) {
            (_, None) => {
                wire = None;
                node += 1;
                if input == Input::Get { None } else { Some(Output::Unknown) }
            }
            (Input::Get, Some(Reply::Value { value, .. })) => {
                let v: u64 = std::str::from_utf8(&value).unwrap().parse().unwrap();
                seen[key as usize] = v;
                Some(Output::Value(Some(v)))
            }
            (Input::Get, Some(Reply::Error(e))) if e.code == ErrorCode::NotFound => {
                Some(Output::Value(None))
            }
            (Input::Get, Some(_)) => None,
            (Input::Set(_), Some(Reply::Written { .. })) => Some(Output::Written),
            (Input::Cas { .. }, Some(Reply::Written { .. })) => Some(Output::Swapped(true)),
            (Input::Cas { .. }, Some(Reply::Error(e)))
                if matches!(e.code, ErrorCode::ConditionFailed | ErrorCode::NotFound) =>
            {
                Some(Output::Swapped(false))
            }
            // Every other typed error says the write did not apply (the server's promise,
            // checked here): left out of the history.
            (_, Some(Reply::Error(e))) if e.code != ErrorCode::OutcomeUnknown => {
                node += 1;
                wire = None;
                None
            }
            (_, Some(Reply::Error(_))) => {
                node += 1;
                wire = None;
                Some(Output::Unknown)
            }
            (_, Some(other)) => panic!("unexpected reply {other:?}"),
        };
        if let Some(output) = output {
            let ret = if output == Output::Unknown { u64::MAX } else { ret };
            history.lock().unwrap().push(Operation { key, input, output, call, ret });
        }
    }
}

/// The checks of a nemesis run: enough acknowledged writes, and a linearizable history.
pub(super) fn check_history(history: &[crate::linearizable::Operation], faults: &[String]) {
    use crate::linearizable::{self, Output};
    let ok = history.iter().filter(|o| o.output != Output::Unknown).count();
    let writes_ok = history
        .iter()
        .filter(|o| matches!(o.output, Output::Written | Output::Swapped(true)))
        .count();
    eprintln!(
        "nemesis: {faults:?}; {} operations recorded, {ok} with known outcome, {writes_ok} \
         acknowledged writes",
        history.len()
    );
    assert!(writes_ok >= 200, "too few writes got through to make the check meaningful");
    if let Err((key, ops)) = linearizable::check(history) {
        let mut ops = ops;
        ops.sort_by_key(|o| o.call);
        let path = std::env::temp_dir().join(format!("corekv-history-lin-{key}.txt"));
        let text: Vec<String> = ops.iter().map(|o| format!("{o:?}")).collect();
        let _ = std::fs::write(&path, text.join("\n"));
        panic!(
            "history of key lin-{key} ({} operations) is not linearizable; written to {}",
            ops.len(),
            path.display()
        );
    }
}
