//! A private network of test hosts on one machine: each host is a Linux network
//! namespace with one address on a bridge, and partitions are blackhole routes
//! (iproute2). Needs root (CAP_NET_ADMIN) and the `ip` command.
//!
//! ```text
//!   root namespace: bridge qb… 10.X.Y.254/24  (the test's clients connect from here)
//!        │ veth        │ veth        │ veth
//!   ns host 1       ns host 2     ns host 3     each: lo + eth0 10.X.Y.i/24
//! ```
//!
//! A partition adds, in every host of one side, a `blackhole` route to each
//! host of the other side, so packets between the sides are dropped in both
//! directions while the root namespace still reaches every host (a client can
//! talk to both sides, as a client in another rack would). Healing removes
//! those routes. Everything is removed when the [`Lan`] is dropped.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the network could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// An `ip` or `tc` command failed; the text is its stderr.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed.
        stderr: String,
    },
    /// No free 10.X.Y.0/24 subnet was found.
    #[error("no free subnet for a test network")]
    NoSubnet,
}

/// Runs `program ARGS` (iproute2's `ip` or `tc`).
fn run(program: &str, args: &[&str]) -> Result<(), NetError> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetError::Command {
            command: command.clone(),
            stderr: format!("cannot run {program}: {e}"),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetError::Command {
            command,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    run("ip", args)
}

fn tc(args: &[&str]) -> Result<(), NetError> {
    run("tc", args)
}

/// One host of a [`Lan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Its network namespace (run a program there with `ip netns exec NAME`).
    pub netns: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The root-namespace end of its veth pair.
    veth: String,
}

/// A bridge with hosts in their own network namespaces.
#[derive(Debug)]
pub struct Lan {
    bridge: String,
    hosts: Vec<Host>,
    /// Blackhole routes in place: (host index, address of the other side).
    cuts: Mutex<BTreeSet<(usize, Ipv4Addr)>>,
    /// Hosts with a netem qdisc on their interface.
    impaired: Mutex<BTreeSet<usize>>,
}

static NEXT_LAN: AtomicU32 = AtomicU32::new(0);

/// A /24 under 10.0.0.0/8 no interface of the root namespace uses yet.
fn free_subnet() -> Result<(u8, u8), NetError> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .map_err(|e| NetError::Command {
            command: "ip -4 -o addr show".to_owned(),
            stderr: e.to_string(),
        })?;
    let used = String::from_utf8_lossy(&output.stdout).into_owned();
    let seed = std::process::id();
    for attempt in 0..2000u32 {
        let n = seed.wrapping_add(attempt.wrapping_mul(7919));
        let (x, y) = (200 + (n % 50) as u8, ((n / 50) % 256) as u8);
        if !used.contains(&format!(" 10.{x}.{y}.")) {
            return Ok((x, y));
        }
    }
    Err(NetError::NoSubnet)
}

impl Lan {
    /// Creates a bridge and `hosts` namespaces attached to it, addresses
    /// 10.X.Y.1 … 10.X.Y.n (the root namespace is 10.X.Y.254).
    ///
    /// # Errors
    /// [`NetError`] if an `ip` command fails (not root, no bridge support);
    /// whatever was created is removed again.
    pub fn create(hosts: usize) -> Result<Lan, NetError> {
        let tag = format!(
            "{}x{}",
            std::process::id(),
            NEXT_LAN.fetch_add(1, Ordering::Relaxed)
        );
        let (x, y) = free_subnet()?;
        let mut lan = Lan {
            bridge: format!("qb{tag}"),
            hosts: Vec::new(),
            cuts: Mutex::new(BTreeSet::new()),
            impaired: Mutex::new(BTreeSet::new()),
        };
        ip(&["link", "add", &lan.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.{x}.{y}.254/24"),
            "dev",
            &lan.bridge,
        ])?;
        ip(&["link", "set", &lan.bridge, "up"])?;
        for i in 1..=hosts {
            let host = Host {
                netns: format!("quarry-{tag}-h{i}"),
                addr: Ipv4Addr::new(10, x, y, i as u8),
                veth: format!("qv{tag}h{i}"),
            };
            let peer = format!("{}p", host.veth);
            ip(&["netns", "add", &host.netns])?;
            lan.hosts.push(host.clone());
            ip(&[
                "link", "add", &host.veth, "type", "veth", "peer", "name", &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &host.netns])?;
            ip(&["link", "set", &host.veth, "master", &lan.bridge, "up"])?;
            let ns = host.netns.as_str();
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(lan)
    }

    /// The hosts, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Cuts every link between a host in `side` and a host not in it (indexes
    /// into [`Lan::hosts`]), in both directions.
    ///
    /// # Errors
    /// [`NetError`] if a route cannot be added.
    pub fn partition(&self, side: &[usize]) -> Result<(), NetError> {
        let n = self.hosts.len();
        let pairs: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .filter(|(i, j)| side.contains(i) != side.contains(j))
            .collect();
        self.cut(&pairs)
    }

    /// Cuts the links between each pair of hosts `(i, j)`, both directions
    /// (e.g. a "bridge": two halves that only one node between them reaches).
    ///
    /// # Errors
    /// [`NetError`] if a route cannot be added.
    pub fn cut(&self, pairs: &[(usize, usize)]) -> Result<(), NetError> {
        let mut cuts = self.cuts.lock().expect("cuts lock");
        for &(a, b) in pairs {
            for (i, j) in [(a, b), (b, a)] {
                let other = self.hosts[j].addr;
                if i != j && cuts.insert((i, other)) {
                    ip(&[
                        "-n",
                        &self.hosts[i].netns,
                        "route",
                        "add",
                        "blackhole",
                        &format!("{other}/32"),
                    ])?;
                }
            }
        }
        Ok(())
    }

    /// Limits what host `i` sends to `rate_kbit` kbit/s, queueing up to
    /// 500 ms before dropping (tc tbf on its interface), until [`Lan::heal`].
    /// (tc netem, for fixed delay and random loss, is not in every kernel:
    /// this machine's answers "Specified qdisc kind is unknown".)
    ///
    /// # Errors
    /// [`NetError`] if tc fails.
    pub fn throttle(&self, i: usize, rate_kbit: u32) -> Result<(), NetError> {
        let mut impaired = self.impaired.lock().expect("impaired lock");
        let verb = if impaired.insert(i) { "add" } else { "change" };
        tc(&[
            "-n",
            &self.hosts[i].netns,
            "qdisc",
            verb,
            "dev",
            "eth0",
            "root",
            "tbf",
            "rate",
            &format!("{rate_kbit}kbit"),
            "burst",
            "16kbit",
            "latency",
            "500ms",
        ])
    }

    /// Removes every cut and every impairment.
    ///
    /// # Errors
    /// [`NetError`] if a route or qdisc cannot be removed.
    pub fn heal(&self) -> Result<(), NetError> {
        let mut impaired = self.impaired.lock().expect("impaired lock");
        while let Some(i) = impaired.pop_first() {
            tc(&[
                "-n",
                &self.hosts[i].netns,
                "qdisc",
                "del",
                "dev",
                "eth0",
                "root",
            ])?;
        }
        let mut cuts = self.cuts.lock().expect("cuts lock");
        while let Some((i, addr)) = cuts.pop_first() {
            ip(&[
                "-n",
                &self.hosts[i].netns,
                "route",
                "del",
                "blackhole",
                &format!("{addr}/32"),
            ])?;
        }
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = ip(&["link", "del", &host.veth]);
            let _ = ip(&["netns", "del", &host.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::Duration;

    /// Whether `from`'s namespace can open a TCP connection to `to:port`.
    fn reaches(from: &Host, to: SocketAddr) -> bool {
        let script = format!(
            "import socket,sys\ntry:\n socket.create_connection(('{}',{}),timeout=1)\nexcept OSError:\n sys.exit(1)",
            to.ip(),
            to.port()
        );
        Command::new("ip")
            .args(["netns", "exec", &from.netns, "python3", "-c", &script])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    #[test]
    fn hosts_reach_each_other_until_partitioned_and_again_after_healing() {
        let lan = Lan::create(3).expect("a test network (needs root and iproute2)");
        // A listener in the root namespace on the bridge address stands in for
        // a service every host reaches; host-to-host is checked through it and
        // through a listener inside host 3.
        let bridge_addr = {
            let h = lan.hosts()[0].addr.octets();
            Ipv4Addr::new(h[0], h[1], h[2], 254)
        };
        let root = TcpListener::bind((bridge_addr, 0)).expect("bind on the bridge");
        let root_addr = root.local_addr().expect("addr");
        let h3 = &lan.hosts()[2];
        let mut server = Command::new("ip")
            .args(["netns", "exec", &h3.netns, "python3", "-c"])
            .arg(format!(
                "import socket,time\ns=socket.socket()\ns.bind(('{}',7999))\ns.listen(16)\ntime.sleep(30)",
                h3.addr
            ))
            .spawn()
            .expect("listener in host 3");
        let h3_addr = SocketAddr::from((h3.addr, 7999));
        let up = (0..50).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            TcpStream::connect_timeout(&h3_addr, Duration::from_secs(1)).is_ok()
        });
        assert!(up, "the root namespace reaches host 3");
        assert!(reaches(&lan.hosts()[0], h3_addr));
        assert!(reaches(&lan.hosts()[0], root_addr));

        lan.partition(&[2]).expect("partition");
        assert!(!reaches(&lan.hosts()[0], h3_addr), "cut between sides");
        assert!(reaches(&lan.hosts()[0], root_addr), "root still reached");
        assert!(
            TcpStream::connect_timeout(&h3_addr, Duration::from_secs(1)).is_ok(),
            "the root namespace still reaches the isolated host"
        );

        lan.heal().expect("heal");
        assert!(reaches(&lan.hosts()[0], h3_addr), "healed");
        let _ = server.kill();
        let _ = server.wait();
    }
}
