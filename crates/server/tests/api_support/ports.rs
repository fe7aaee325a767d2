//! Loopback ports for test members, chosen so that nothing else can take them between the
//! choice and the member's bind, nor while a member is down for a restart.
//!
//! A port the kernel hands out for `bind(0)` lies in the ephemeral range (32768-60999 on
//! Linux), and the same range supplies the local end of every outgoing connection: a client or
//! peer connection opened after the choice can land on the port and the member's bind then
//! fails with "Address already in use". So the ports come from 20000-31999, below that range,
//! and two tests (threads of one test binary, or test processes running side by side) never
//! get the same port: each choice is recorded in this process and locked with `flock` on a file
//! named after the port, a lock that ends with the process that holds it.

use std::collections::BTreeSet;
use std::collections::hash_map::RandomState;
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::sync::Mutex;

const FIRST: u16 = 20_000;
const COUNT: u16 = 12_000;

/// Ports chosen by this process, with their lock files (held until the process exits).
static CHOSEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
static LOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A loopback port below the ephemeral range that nothing listens on and that no other test
/// holds; it stays reserved for this test process until it exits.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("ballot-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock directory");
    let random = RandomState::new();
    for attempt in 0u64.. {
        assert!(
            attempt < 100_000,
            "no free loopback port in {FIRST}..{}",
            FIRST + COUNT
        );
        let mut hasher = random.build_hasher();
        hasher.write_u64(attempt);
        let port = FIRST + (hasher.finish() % u64::from(COUNT)) as u16;
        let mut chosen = CHOSEN.lock().expect("port set");
        if chosen.contains(&port) {
            continue;
        }
        let Ok(lock) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        chosen.insert(port);
        LOCKS.lock().expect("port locks").push(lock);
        return port;
    }
    unreachable!("the loop returns or panics")
}
