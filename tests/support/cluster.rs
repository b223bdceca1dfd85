//! A real OpenBao HA cluster for tests: `n` `bao server` processes on loopback with
//! integrated (raft) storage (not `-dev`), initialised, unsealed and joined through the HTTP
//! API, then configured by `deploy/vault/setup.py` like the single node. Each node keeps its
//! own file audit log, so a test can count the sign calls each node answered.
//!
//! Raft timing is shortened for tests: `performance_multiplier = 1` (a new leader within a few
//! seconds) and autopilot's stabilization time 1 s (joiners become voters quickly).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{OpenBao, free_port_pair, http};

/// A running cluster; every node is killed on drop.
pub struct Cluster {
    pub nodes: Vec<OpenBao>,
    pub root_token: String,
    unseal_key: String,
}

impl Cluster {
    /// Starts `n` nodes, initialises the first, joins the others, and waits until all are
    /// raft voters and unsealed.
    pub async fn start(n: usize) -> Self {
        Self::start_placed(n, |_| {
            let port = free_port_pair();
            ("127.0.0.1".to_owned(), port, None)
        })
        .await
    }

    /// [`Cluster::start`] with node `i` in `lab`'s namespace for it, on its own address.
    pub async fn start_in(lab: &super::netns::Lab, n: usize) -> Self {
        Self::start_placed(n, |i| (lab.node_ip(i), 8200, Some(lab.node(i)))).await
    }

    /// Node `i` listens on `place(i)`: (host, port, network namespace).
    async fn start_placed(
        n: usize,
        place: impl Fn(usize) -> (String, u16, Option<String>),
    ) -> Self {
        let mut nodes = Vec::new();
        for i in 0..n {
            let (host, port, netns) = place(i);
            nodes.push(raft_node(&format!("node{i}"), &host, port, netns));
        }
        for node in &nodes {
            node.wait_responding().await;
        }
        let (root_token, unseal_key) = nodes[0].init().await;
        for node in &mut nodes {
            node.root_token = root_token.clone();
            node.unseal_key = Some(unseal_key.clone());
        }
        let cluster = Self {
            nodes,
            root_token,
            unseal_key,
        };
        cluster.unseal(0).await;
        cluster.wait_state(0, &[200]).await;
        cluster.nodes[0]
            .api(
                "POST",
                "sys/storage/raft/autopilot/configuration",
                serde_json::json!({"server_stabilization_time": "1s", "cleanup_dead_servers": false}),
            )
            .await;
        for i in 1..n {
            let resp = http()
                .post(format!(
                    "{}/v1/sys/storage/raft/join",
                    cluster.nodes[i].addr
                ))
                .json(&serde_json::json!({"leader_api_addr": cluster.nodes[0].addr}))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success(), "join: {}", resp.status());
            cluster.unseal(i).await;
            cluster.wait_state(i, &[429]).await;
        }
        cluster.wait_voters(n).await;
        cluster
    }

    /// Every node's address, comma-separated (`vault.addr` for the signer).
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `sys/health`'s status code of node `i` (200 active, 429 standby, 503 sealed), or 0 when
    /// it does not answer.
    pub async fn health(&self, i: usize) -> u16 {
        match http()
            .get(format!("{}/v1/sys/health", self.nodes[i].addr))
            .timeout(Duration::from_secs(2))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// The index of the active node (waits for one).
    pub async fn active(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            for i in 0..self.nodes.len() {
                if self.health(i).await == 200 {
                    return i;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no active OpenBao node within 60s");
    }

    /// Waits until node `i`'s `sys/health` answers one of `codes`.
    pub async fn wait_state(&self, i: usize, codes: &[u16]) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = 0;
        while Instant::now() < deadline {
            last = self.health(i).await;
            if codes.contains(&last) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node {i}: sys/health {last}, waited for {codes:?}");
    }

    /// Waits until the raft configuration lists `n` voters.
    async fn wait_voters(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let active = self.active().await;
            let config = self.nodes[active]
                .api(
                    "GET",
                    "sys/storage/raft/configuration",
                    serde_json::Value::Null,
                )
                .await;
            let voters = config["data"]["config"]["servers"]
                .as_array()
                .map_or(0, |s| s.iter().filter(|s| s["voter"] == true).count());
            if voters == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the raft cluster did not reach {n} voters");
    }

    /// Unseals node `i` with the cluster's key.
    pub async fn unseal(&self, i: usize) {
        let resp = http()
            .put(format!("{}/v1/sys/unseal", self.nodes[i].addr))
            .json(&serde_json::json!({"key": self.unseal_key}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "unseal: {}", resp.status());
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].stop();
    }

    /// Starts a killed node again and unseals it; it rejoins as a standby.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.nodes[i].wait_responding().await;
        self.unseal(i).await;
        self.wait_state(i, &[200, 429]).await;
    }

    /// `sys/step-down` on the active node; returns its index.
    pub async fn step_down(&self) -> usize {
        let active = self.active().await;
        self.nodes[active]
            .api("PUT", "sys/step-down", serde_json::Value::Null)
            .await;
        active
    }

    /// Runs `deploy/vault/setup.py` against the active node; returns its output directory.
    pub async fn setup(&self) -> PathBuf {
        let active = self.active().await;
        self.nodes[active].setup(&[])
    }

    /// `sign/<role>` requests node `i` answered itself, per its audit log (a forwarded request
    /// is logged by the node that served it).
    pub fn sign_calls(&self, i: usize) -> usize {
        self.nodes[i].sign_calls()
    }
}

/// Writes node `id`'s configuration into a new directory and starts it (sealed, not
/// initialised) on `host:port` (cluster port `port + 1`), in `netns` if given.
fn raft_node(id: &str, host: &str, port: u16, netns: Option<String>) -> OpenBao {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(
        dir.path().join("server.hcl"),
        node_config(dir.path(), id, host, port),
    )
    .unwrap();
    let mut bao = OpenBao {
        child: None,
        port,
        addr: format!("http://{host}:{port}"),
        root_token: String::new(),
        dir,
        unseal_key: None,
        netns,
    };
    bao.spawn();
    bao
}

fn node_config(dir: &Path, id: &str, host: &str, port: u16) -> String {
    format!(
        "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"{id}\"\n  performance_multiplier = 1\n}}\n\
         listener \"tcp\" {{\n  address = \"{host}:{port}\"\n  cluster_address = \"{host}:{cport}\"\n  tls_disable = true\n}}\n\
         api_addr = \"http://{host}:{port}\"\n\
         # The cluster port always speaks TLS.\n\
         cluster_addr = \"https://{host}:{cport}\"\n\
         # Relative to each node's working directory: the audit table is replicated, so every\n\
         # node must declare the same path, yet each keeps its own log.\n\
         audit \"file\" \"test\" {{\n  options {{\n    file_path = \"audit.log\"\n  }}\n}}\n",
        data = dir.join("data").display(),
        cport = port + 1,
    )
}
