//! The signer binary in its own process (`istio-vault-ca serve --config`), as a pod runs it:
//! its own memory, signals (SIGTERM drains, SIGKILL does not) and exit status. Its log goes
//! to `log` in its directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use istio_vault_ca::client::{self, Shape};
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};

use super::OpenBao;

/// A running signer process; killed on drop.
pub struct SignerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Roots that validate its serving certificate.
    pub ca_pem: Vec<u8>,
    pub issuer: DevIssuer,
    pub dir: tempfile::TempDir,
    /// How it was started, to start it again.
    launch: Launch,
}

/// The command line of a signer process: namespace, config file, extra environment.
struct Launch {
    netns: Option<String>,
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Launch {
    fn spawn(&self, log: &Path) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        // ABUSE_BIN: measure another build (e.g. target/release/istio-vault-ca).
        let bin = std::env::var("ABUSE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| signer_bin());
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        command
            .args(["serve", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap()
    }
}

/// What the abuse tests measure a flood with.
impl SignerProcess {
    /// OpenBao, set up, and a signer process (`extra` added to `[server]`) that has issued one
    /// certificate, with its RSS then (KiB): the baseline a flood is measured against.
    pub async fn warmed(extra: &str) -> (OpenBao, Self, u64) {
        let bao = OpenBao::start().await;
        let setup = bao.setup(&[]);
        let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
        let signer = Self::start(&bao.addr, &setup, extra, "warn", issuer).await;
        // The first calls load keys and caches.
        signer
            .legit(Shape::PilotAgent, "warm", Duration::from_secs(10))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let idle = signer.rss_kib();
        (bao, signer, idle)
    }

    /// Resident memory of the signer process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        istio_vault_ca::loadgen::proc_status_kib(self.child.id(), "VmRSS:")
            .expect("the signer's VmRSS")
    }

    /// A pilot-agent's call options for `default/sa`, with a valid token.
    pub fn agent_options(&self, sa: &str) -> client::CallOptions {
        client::CallOptions {
            token: Some(self.issuer.token(&TokenSpec::new("default", sa)).unwrap()),
            cluster_id: Some("Kubernetes".into()),
            ttl_seconds: 3600,
            impersonate: None,
            cert_signer: None,
        }
    }

    /// Waits until no call is in flight or queued at the signer's gate.
    pub async fn gate_empties(&self, what: &str) {
        super::eventually(what, async || {
            let text = self.metrics().await;
            super::sample(&text, "istio_vault_ca_in_flight_requests") == Some(0.0)
                && super::sample(&text, "istio_vault_ca_queued_requests").unwrap_or(0.0) == 0.0
        })
        .await;
    }

    /// One legitimate call of `shape` for `ns/sa` from 127.0.0.1, within `deadline`.
    pub async fn legit(
        &self,
        shape: Shape,
        sa: &str,
        deadline: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let want = super::id("default", sa);
        let mut opts = self.agent_options(sa);
        if shape == Shape::Ztunnel {
            opts.impersonate = Some(want.to_string());
        }
        let call = async {
            let kc = client::generate_csr(shape, &want).map_err(|e| e.to_string())?;
            let req = client::build_request(shape, &kc.csr_pem, &want, &opts)
                .map_err(|e| e.to_string())?;
            let mut c = client::connect(&self.addr.to_string(), &self.ca_pem, Some("localhost"))
                .await
                .map_err(|e| format!("connect: {e:#}"))?;
            let chain = c
                .create_certificate(req)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner()
                .cert_chain;
            let got = client::inspect_chain(&chain).map_err(|e| e.to_string())?;
            if got.identity != want.to_string() {
                return Err(format!("issued {} for {want}", got.identity));
            }
            Ok(())
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(Ok(())) => Ok(start.elapsed()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {deadline:?}")),
        }
    }
}

/// The signer binary Cargo builds for the integration tests, beside the running test
/// executable's directory (`target/<profile>/istio-vault-ca`, the test in
/// `target/<profile>/deps/`): what `CARGO_BIN_EXE_istio-vault-ca` names in the tests, which
/// this crate, not part of the signer's package, is not given.
pub fn signer_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    profile_dir.join(format!("istio-vault-ca{}", std::env::consts::EXE_SUFFIX))
}

impl Drop for SignerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl SignerProcess {
    /// Starts the binary against `vault_addr` with the setup script's output in `setup`,
    /// trusting `issuer`'s tokens; `server_extra` is added to `[server]`, `log_level` sets
    /// `[log] level`. Waits until `/readyz` says ready.
    pub async fn start(
        vault_addr: &str,
        setup: &Path,
        server_extra: &str,
        log_level: &str,
        issuer: DevIssuer,
    ) -> Self {
        Self::start_in(
            None,
            "127.0.0.1",
            vault_addr,
            setup,
            server_extra,
            log_level,
            issuer,
        )
        .await
    }

    /// [`SignerProcess::start`] inside network namespace `netns` (`ip netns exec`), listening
    /// on `host`.
    pub async fn start_in(
        netns: Option<&str>,
        host: &str,
        vault_addr: &str,
        setup: &Path,
        server_extra: &str,
        log_level: &str,
        issuer: DevIssuer,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks_json()).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        // Inside the test's own network namespaces Vault's nodes have private addresses and
        // speak plain HTTP: allowed by name, as an operator would have to.
        let insecure = if netns.is_some() {
            "allow_insecure_http = true\n"
        } else {
            ""
        };
        let config = format!(
            r#"
[server]
listen = "{host}:{port}"
cert_file = "{tls}/tls.crt"
key_file = "{tls}/tls.key"
{server_extra}
[auth.jwt]
jwks_file = "{jwks}"
[vault]
addr = "{vault_addr}"
token_file = "{setup}/vault-token"
{insecure}[admin]
listen = "{host}:{admin_port}"
[audit]
enabled = false
[log]
level = "{log_level}"
# Every call of a test comes from 127.0.0.1: one workload per identity (support::TEST_PER_WORKLOAD).
[rate_limits]
per_workload = {{ per_minute = {per_minute}, burst = {burst} }}
"#,
            per_minute = super::TEST_PER_WORKLOAD.per_minute,
            burst = super::TEST_PER_WORKLOAD.burst,
            tls = setup.join("tls").display(),
            jwks = jwks.display(),
            setup = setup.display(),
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).unwrap();
        let ip: std::net::IpAddr = host.parse().unwrap();
        let ca_pem = std::fs::read(setup.join("tls/root-cert.pem")).unwrap();
        let at = (SocketAddr::new(ip, port), SocketAddr::new(ip, admin_port));
        Self::spawn(netns, &path, dir, at, ca_pem, issuer, &[]).await
    }

    /// Starts the binary with a configuration file of the caller's (`addr`/`admin` as it
    /// listens), extra environment `env`, and waits until ready.
    pub async fn start_with_config(
        config: &Path,
        addr: SocketAddr,
        admin: SocketAddr,
        ca_pem: Vec<u8>,
        issuer: DevIssuer,
        env: &[(&str, &str)],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::spawn(None, config, dir, (addr, admin), ca_pem, issuer, env).await
    }

    /// Runs `serve --config config` (in `netns` if given; log in `dir/log`) and waits up to
    /// 30 s until `/readyz` on `at.1` says ready, showing the log if it does not.
    async fn spawn(
        netns: Option<&str>,
        config: &Path,
        dir: tempfile::TempDir,
        at: (SocketAddr, SocketAddr),
        ca_pem: Vec<u8>,
        issuer: DevIssuer,
        env: &[(&str, &str)],
    ) -> Self {
        let launch = Launch {
            netns: netns.map(str::to_owned),
            config: config.to_path_buf(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let child = launch.spawn(&dir.path().join("log"));
        let signer = Self {
            child,
            addr: at.0,
            admin: at.1,
            ca_pem,
            issuer,
            dir,
            launch,
        };
        signer.wait_ready().await;
        signer
    }

    /// Kills the process (SIGKILL, as a node failure or an OOM kill would) and starts it again
    /// on the same addresses with the same configuration; waits until it is ready. Its log
    /// continues in the same file.
    pub async fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = self.launch.spawn(&self.log_path());
        self.wait_ready().await;
    }

    /// Waits up to 30 s until `/readyz` says ready, showing the log if it does not.
    async fn wait_ready(&self) {
        let signer = self;
        let ready = async || {
            matches!(super::http().get(format!("http://{}/readyz", signer.admin)).send().await,
                Ok(r) if r.status().is_success())
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready().await {
            assert!(
                Instant::now() < deadline,
                "signer not ready; its log:\n{}",
                signer.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log")
    }

    /// `/metrics`.
    /// One call of `shape` for `ns/sa` over a new TLS connection, its token bound to a pod on
    /// `node` when given (as projected tokens are); the chain it returned.
    pub async fn issue(
        &self,
        shape: istio_vault_ca::client::Shape,
        ns: &str,
        sa: &str,
        node: Option<&str>,
    ) -> Result<Vec<String>, tonic::Status> {
        use istio_vault_ca::client;
        let want = super::id(ns, sa);
        let mut spec = istio_vault_ca::dev::TokenSpec::new(ns, sa);
        if let Some(node) = node {
            spec.pod = Some((format!("{sa}-pod"), format!("uid-{ns}-{sa}"), node.into()));
        }
        let opts = client::CallOptions {
            token: Some(self.issuer.token(&spec).unwrap()),
            cluster_id: Some("Kubernetes".into()),
            ttl_seconds: 3600,
            impersonate: None,
            cert_signer: None,
        };
        let kc = client::generate_csr(shape, &want).unwrap();
        let req = client::build_request(shape, &kc.csr_pem, &want, &opts).unwrap();
        Ok(
            client::connect(&self.addr.to_string(), &self.ca_pem, Some("localhost"))
                .await
                .unwrap()
                .create_certificate(req)
                .await?
                .into_inner()
                .cert_chain,
        )
    }

    pub async fn metrics(&self) -> String {
        super::http()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends `signal` (`-KILL`, `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal}");
    }

    /// Waits up to `limit` for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "signer still running after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
