//! Loopback ports for test members, chosen so that nothing else can take them between the
//! choice and the member's bind, nor while a member is down for a restart.
//!
//! A port the kernel hands out for `bind(0)` lies in the ephemeral range (32768-60999 on
//! Linux), and the same range supplies the local end of every outgoing connection: a client or
//! peer connection opened after the choice can land on the port and the member's bind then
//! fails with "Address already in use". So the ports come from `ballot dev`'s range below it
//! (`ballot::dev::random_ports`), and two tests (threads of one test binary, or test processes
//! running side by side) never get the same port: each choice is locked with `flock` on a file
//! named after the port, held until the process exits (a second descriptor of the same file
//! cannot take the lock either, so this also covers threads of one process).

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::sync::Mutex;

/// The lock files of the ports this process chose (held until it exits).
static LOCKS: Mutex<Vec<File>> = Mutex::new(Vec::new());

/// A loopback port below the ephemeral range that nothing listens on and that no other test
/// holds; it stays reserved for this test process until it exits.
pub fn free_port() -> u16 {
    let dir = std::env::temp_dir().join("ballot-test-ports");
    std::fs::create_dir_all(&dir).expect("create the port lock directory");
    for port in ballot::dev::random_ports().take(100_000) {
        let Ok(lock) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(port.to_string()))
        else {
            continue;
        };
        if lock.try_lock().is_ok() && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            LOCKS.lock().expect("port locks").push(lock);
            return port;
        }
    }
    panic!("no free loopback port in ballot dev's range")
}
