//! A private network for one test run: a network namespace per member, each joined to a bridge
//! in the root namespace by a veth pair, and partitions made of blackhole routes.
//!
//! The test process stays in the root namespace, where the bridge carries an address of the
//! member subnet, so clients reach every member directly and are never cut off by a partition
//! between members (only `isolate` cuts a member off from everyone, clients included).
//!
//! The kernel here has neither netem nor tc classifiers nor iptables, so a one-way cut
//! `from -> to` is a blackhole route to `to`'s address inside `from`'s namespace: `from` can no
//! longer send anything to `to`. Over TCP that is not quite one-way: `to`'s segments still reach
//! `from` and are delivered to its sockets, but `from`'s acknowledgements are dropped, so `to`
//! retransmits into silence. Cutting both directions is a symmetric partition.
//!
//! Every name carries the test process's pid, and `Drop` removes everything this run created
//! (also when the test panics); `sweep_stale` removes what a run killed before its `Drop` left.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Prefix of every namespace this test creates; the pid and member index follow.
const NAMESPACE_PREFIX: &str = "ballot-fault-";

/// How long a link that was set up may take to carry traffic.
const LINK_READY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a link's state is read while waiting for it.
const LINK_POLL: std::time::Duration = std::time::Duration::from_millis(10);
/// `/sys/class/net/<port>/brport/state` of a bridge port that forwards (BR_STATE_FORWARDING).
const BRIDGE_PORT_FORWARDING: &str = "3";

fn read_sys(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
}

/// One member's place in the network.
pub struct Slot {
    pub namespace: String,
    /// The veth end in the root namespace, attached to the bridge.
    pub host_link: String,
    /// The veth end inside the member's namespace.
    pub member_link: String,
    pub address: String,
}

/// The namespaces, links and routes of one run. Dropping it removes all of them.
pub struct Network {
    bridge: String,
    /// The root namespace's address on the bridge, with its prefix length.
    bridge_address: String,
    pub slots: Vec<Slot>,
    /// One-way cuts in force: (from, to) member indexes.
    cuts: BTreeSet<(usize, usize)>,
    /// Members whose host link is down.
    isolated: BTreeSet<usize>,
}

/// Runs `ip` with `args`; on failure returns what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("cannot run `ip {}`: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Panics with the reason a fault test cannot run: it needs root and iproute2, which CI has, so
/// an environment without them must fail loudly rather than pass without testing anything.
fn setup_failed(reason: &str) -> ! {
    panic!(
        "the real-process fault test needs root and iproute2 to create network namespaces, veth \
         pairs and a bridge (CI runs as root); setting up the network failed: {reason}"
    )
}

impl Network {
    /// Creates `members` namespaces on a fresh bridge for run number `run` of this process
    /// (`super::next_run`). Fails the test with a clear message when namespaces cannot be
    /// created.
    pub fn create(run: u32, members: usize) -> Network {
        sweep_stale();
        let pid = std::process::id();
        let subnet = pick_subnet(pid, run);
        let tag = format!("bf{pid}x{run}");
        let mut network = Network {
            bridge: format!("{tag}b"),
            bridge_address: format!("{subnet}.1/24"),
            slots: Vec::new(),
            cuts: BTreeSet::new(),
            isolated: BTreeSet::new(),
        };
        // Registered in `network` before each step, so Drop removes whatever a failure left.
        if let Err(reason) = ip(&["link", "add", &network.bridge, "type", "bridge"]) {
            setup_failed(&reason);
        }
        let bridge = network.bridge.clone();
        let bridge_address = network.bridge_address.clone();
        network
            .run_setup(&[&["addr", "add", &bridge_address, "dev", &bridge]])
            .unwrap_or_else(|reason| setup_failed(&reason));
        network
            .run_setup(&[&["link", "set", &bridge, "up"]])
            .unwrap_or_else(|reason| setup_failed(&reason));
        for index in 0..members {
            let slot = Slot {
                namespace: format!("{NAMESPACE_PREFIX}{pid}-{run}-m{index}"),
                host_link: format!("{tag}h{index}"),
                member_link: format!("{tag}n{index}"),
                address: format!("{subnet}.{}", index + 2),
            };
            if let Err(reason) = ip(&["netns", "add", &slot.namespace]) {
                setup_failed(&reason);
            }
            network.slots.push(slot);
            let slot = &network.slots[index];
            let member_address = format!("{}/24", slot.address);
            let steps: [&[&str]; 7] = [
                &[
                    "link",
                    "add",
                    &slot.host_link,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &slot.member_link,
                ],
                &["link", "set", &slot.member_link, "netns", &slot.namespace],
                &["link", "set", &slot.host_link, "master", &bridge],
                &["link", "set", &slot.host_link, "up"],
                &[
                    "-n",
                    &slot.namespace,
                    "addr",
                    "add",
                    &member_address,
                    "dev",
                    &slot.member_link,
                ],
                &[
                    "-n",
                    &slot.namespace,
                    "link",
                    "set",
                    &slot.member_link,
                    "up",
                ],
                &["-n", &slot.namespace, "link", "set", "lo", "up"],
            ];
            network
                .run_setup(&steps)
                .unwrap_or_else(|reason| setup_failed(&reason));
        }
        for member in 0..members {
            network
                .wait_until_linked(member)
                .unwrap_or_else(|reason| setup_failed(&reason));
        }
        network
    }

    fn run_setup(&self, steps: &[&[&str]]) -> Result<(), String> {
        steps.iter().try_for_each(|step| ip(step))
    }

    pub fn address(&self, member: usize) -> &str {
        &self.slots[member].address
    }

    pub fn namespace(&self, member: usize) -> &str {
        &self.slots[member].namespace
    }

    /// From now on `from` cannot send to `to`.
    pub fn cut(&mut self, from: usize, to: usize) {
        if self.cuts.insert((from, to)) {
            let target = format!("{}/32", self.slots[to].address);
            ip(&[
                "-n",
                &self.slots[from].namespace,
                "route",
                "add",
                "blackhole",
                &target,
            ])
            .unwrap_or_else(|reason| panic!("cutting m{from} -> m{to}: {reason}"));
        }
    }

    /// Cuts both directions between `a` and `b`.
    pub fn cut_both(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Takes `member`'s link down: nobody reaches it, clients included, and it reaches nobody.
    pub fn isolate(&mut self, member: usize) {
        if self.isolated.insert(member) {
            let link = self.slots[member].host_link.clone();
            ip(&["link", "set", &link, "down"])
                .unwrap_or_else(|reason| panic!("isolating m{member}: {reason}"));
        }
    }

    /// Removes every cut and brings every link back up.
    pub fn heal(&mut self) {
        for (from, to) in std::mem::take(&mut self.cuts) {
            let target = format!("{}/32", self.slots[to].address);
            ip(&[
                "-n",
                &self.slots[from].namespace,
                "route",
                "del",
                "blackhole",
                &target,
            ])
            .unwrap_or_else(|reason| panic!("healing m{from} -> m{to}: {reason}"));
        }
        for member in std::mem::take(&mut self.isolated) {
            let link = self.slots[member].host_link.clone();
            ip(&["link", "set", &link, "up"])
                .unwrap_or_else(|reason| panic!("reconnecting m{member}: {reason}"));
            self.wait_until_linked(member)
                .unwrap_or_else(|reason| panic!("reconnecting m{member}: {reason}"));
        }
    }

    /// Waits until `member`'s links carry traffic again: both veth ends operationally up and
    /// the bridge port forwarding. Then forgets every neighbour entry for its address: while
    /// its link was down, address resolution failed, and a FAILED entry makes new connections
    /// to it fail at once until the kernel probes again, seconds later.
    fn wait_until_linked(&self, member: usize) -> Result<(), String> {
        let slot = &self.slots[member];
        let deadline = std::time::Instant::now() + LINK_READY_DEADLINE;
        loop {
            let host_up = read_sys(&format!("/sys/class/net/{}/operstate", slot.host_link))
                .is_some_and(|state| state == "up");
            let forwarding = read_sys(&format!("/sys/class/net/{}/brport/state", slot.host_link))
                .is_some_and(|state| state == BRIDGE_PORT_FORWARDING);
            let member_up = ip_output(&[
                "-n",
                &slot.namespace,
                "-o",
                "link",
                "show",
                "dev",
                &slot.member_link,
            ])
            .contains("state UP");
            if host_up && forwarding && member_up {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "links not ready after {LINK_READY_DEADLINE:?} (host link up: {host_up}, \
                     bridge port forwarding: {forwarding}, member link up: {member_up})"
                ));
            }
            std::thread::sleep(LINK_POLL);
        }
        ip(&["neigh", "flush", "to", &slot.address])?;
        for other in self
            .slots
            .iter()
            .filter(|other| other.address != slot.address)
        {
            ip(&[
                "-n",
                &other.namespace,
                "neigh",
                "flush",
                "to",
                &slot.address,
            ])?;
        }
        ip(&["-n", &slot.namespace, "neigh", "flush", "all"])
    }

    /// Whether the blackhole routes in force are exactly the cuts this run believes it made; a
    /// check that the fault machinery does what the schedule says.
    pub fn routes_match_cuts(&self) -> Result<(), String> {
        for (from, slot) in self.slots.iter().enumerate() {
            let routes = ip_output(&["-n", &slot.namespace, "route", "show", "type", "blackhole"]);
            let found: BTreeSet<String> = routes
                .lines()
                .filter_map(|line| line.split_whitespace().nth(1))
                .map(str::to_string)
                .collect();
            let expected: BTreeSet<String> = self
                .cuts
                .iter()
                .filter(|(cut_from, _)| *cut_from == from)
                .map(|(_, to)| self.slots[*to].address.clone())
                .collect();
            if found != expected {
                return Err(format!(
                    "m{from} has blackhole routes {found:?}, the schedule made {expected:?}"
                ));
            }
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, which deletes its peer too.
        for slot in &self.slots {
            let _ = ip(&["netns", "del", &slot.namespace]);
            let _ = ip(&["link", "del", &slot.host_link]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

/// A /24 inside 10.0.0.0/8 derived from the pid and run, so concurrent runs do not share a
/// subnet; refuses one that any interface of the root namespace already uses.
fn pick_subnet(pid: u32, run: u32) -> String {
    let unique = pid.wrapping_mul(4).wrapping_add(run);
    let subnet = format!("10.{}.{}", 100 + (unique / 256) % 150, unique % 256);
    let in_use = ip_output(&["-o", "addr", "show"]);
    if in_use.contains(&format!(" {subnet}.")) {
        setup_failed(&format!(
            "the subnet {subnet}.0/24 derived from pid {pid} is already in use"
        ));
    }
    subnet
}

/// Removes namespaces and bridges left by fault-test runs whose process no longer exists (a run
/// killed with SIGKILL never ran its `Drop`).
pub fn sweep_stale() {
    let dead = |pid: &str| {
        pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    for line in ip_output(&["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(NAMESPACE_PREFIX) else {
            continue;
        };
        if rest.split('-').next().is_some_and(dead) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    // Bridges are named `bf<pid>x<run>b`; their veth ends went with the namespaces.
    for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
        let Some(name) = line.split_whitespace().nth(1) else {
            continue;
        };
        let name = name.trim_end_matches(':');
        let pid = name
            .strip_prefix("bf")
            .and_then(|rest| rest.split('x').next())
            .filter(|_| name.ends_with('b'));
        if pid.is_some_and(dead) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// Runs `work` on a new thread that has entered `namespace`'s network namespace (`setns` moves
/// only the calling thread), so sockets it creates live there.
pub fn in_namespace<T: Send>(namespace: &str, work: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{namespace}");
    std::thread::scope(|scope| {
        let worker = scope.spawn(|| {
            let handle = std::fs::File::open(&path)
                .unwrap_or_else(|error| panic!("opening {path}: {error}"));
            // SAFETY: setns(2) on a file descriptor we own; it changes only this thread's
            // network namespace, and the thread ends when `work` returns.
            let result = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                result,
                0,
                "setns into {namespace} failed: {}",
                std::io::Error::last_os_error()
            );
            work()
        });
        worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
