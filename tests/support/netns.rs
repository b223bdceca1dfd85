//! A small network of this test's own: one network namespace per OpenBao node and one
//! "router" namespace in the middle, joined by veth pairs, so a test can cut one node off
//! from the others (a real partition) while the router side still reaches it.
//!
//! ```text
//!   this namespace ── veth ── router ──┬── veth ── node 0 (10.213.0.2)
//!   10.213.99.1         10.213.99.2    ├── veth ── node 1 (10.213.1.2)
//!                                      └── veth ── node 2 (10.213.2.2)
//! ```
//!
//! Nodes reach each other through the router (IP forwarding on inside it only); this
//! namespace reaches the nodes through a route over its own veth, removed with it. Nothing
//! else of the host's network is touched. [`Lab::isolate`] removes a node's default route:
//! it then answers only on its direct link to the router (where the signer runs) and its
//! peers' packets find no way back.

use std::process::Command;

/// The subnet prefix (`10.213.<n>.0/24` per link).
const NET: &str = "10.213";
/// The link number of the veth between this namespace and the router.
const UPLINK: u8 = 99;

pub struct Lab {
    prefix: String,
    nodes: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// Builds the network for `nodes` nodes, or says why it cannot (no `ip`, no privilege
    /// to create namespaces).
    pub fn create(nodes: usize) -> Result<Self, String> {
        let prefix = format!("iv{}", std::process::id() % 100_000);
        let lab = Self { prefix, nodes };
        lab.build().inspect_err(|_| lab.teardown())?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), String> {
        let r = self.router();
        ip(&["netns", "add", &r])?;
        ip(&["-n", &r, "link", "set", "lo", "up"])?;
        let sysctl = Command::new("ip")
            .args([
                "netns",
                "exec",
                &r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .map_err(|e| e.to_string())?;
        if !sysctl.success() {
            return Err("cannot enable forwarding in the router namespace".into());
        }
        // This namespace ↔ router.
        let (up_here, up_there) = (format!("{}u0", self.prefix), format!("{}u1", self.prefix));
        ip(&[
            "link", "add", &up_here, "type", "veth", "peer", "name", &up_there,
        ])?;
        ip(&["link", "set", &up_there, "netns", &r])?;
        ip(&[
            "addr",
            "add",
            &format!("{NET}.{UPLINK}.1/24"),
            "dev",
            &up_here,
        ])?;
        ip(&["link", "set", &up_here, "up"])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("{NET}.{UPLINK}.2/24"),
            "dev",
            &up_there,
        ])?;
        ip(&["-n", &r, "link", "set", &up_there, "up"])?;
        ip(&[
            "route",
            "add",
            &format!("{NET}.0.0/16"),
            "via",
            &format!("{NET}.{UPLINK}.2"),
            "dev",
            &up_here,
        ])?;
        for i in 0..self.nodes {
            let n = self.node(i);
            ip(&["netns", "add", &n])?;
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
            let (a, b) = (
                format!("{}r{i}", self.prefix),
                format!("{}n{i}", self.prefix),
            );
            ip(&[
                "-n", &r, "link", "add", &a, "type", "veth", "peer", "name", &b,
            ])?;
            ip(&["-n", &r, "link", "set", &b, "netns", &n])?;
            ip(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("{NET}.{i}.1/24"),
                "dev",
                &a,
            ])?;
            ip(&["-n", &r, "link", "set", &a, "up"])?;
            ip(&[
                "-n",
                &n,
                "addr",
                "add",
                &format!("{NET}.{i}.2/24"),
                "dev",
                &b,
            ])?;
            ip(&["-n", &n, "link", "set", &b, "up"])?;
            ip(&[
                "-n",
                &n,
                "route",
                "add",
                "default",
                "via",
                &format!("{NET}.{i}.1"),
            ])?;
        }
        Ok(())
    }

    /// The router namespace (where the signer runs).
    pub fn router(&self) -> String {
        format!("{}-r", self.prefix)
    }

    /// The router's address as this namespace reaches it.
    pub fn router_ip(&self) -> String {
        format!("{NET}.{UPLINK}.2")
    }

    /// Node `i`'s namespace.
    pub fn node(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> String {
        format!("{NET}.{i}.2")
    }

    /// Cuts node `i` off from everything but its direct link to the router.
    pub fn isolate(&self, i: usize) {
        ip(&["-n", &self.node(i), "route", "del", "default"]).unwrap();
    }

    /// Undoes [`Lab::isolate`].
    pub fn heal(&self, i: usize) {
        ip(&[
            "-n",
            &self.node(i),
            "route",
            "add",
            "default",
            "via",
            &format!("{NET}.{i}.1"),
        ])
        .unwrap();
    }

    fn teardown(&self) {
        let _ = ip(&["link", "del", &format!("{}u0", self.prefix)]);
        for i in 0..self.nodes {
            let _ = ip(&["netns", "del", &self.node(i)]);
        }
        let _ = ip(&["netns", "del", &self.router()]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}
