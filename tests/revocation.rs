//! Revocation by what an operator knows (serial, identity, namespace, node), end to end: the
//! certificates the ledger recorded are revoked at Vault from their PEM, Vault's CRL lists
//! exactly them, a TLS verifier given that CRL (as ztunnel is given `istio-ca-crl`) refuses
//! them and accepts the others, and the deny list stops revoked identities from renewing
//! until `unrevoke`.
//!
//! Real parts: OpenBao (dev server, set up by `deploy/vault/setup.py`), the signer and the
//! `istio-vault-ca revoke` / `unrevoke` commands as their own processes, TLS and gRPC
//! clients shaped like pilot-agent and ztunnel, rustls' WebPKI verifier with Vault's CRL.

use std::process::Command;
use std::time::Duration;

use istio_vault_ca::client::{self, Shape};
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer};
use istio_vault_ca::serial::colon_hex;
use support::process::SignerProcess;
use support::{MOUNT, OpenBao, id, sample};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

struct Issued {
    serial: String,
    leaf_der: Vec<u8>,
    chain: Vec<String>,
}

/// One call for `ns/sa` of `shape`, its token bound to a pod on `node` when given.
async fn call(
    s: &SignerProcess,
    shape: Shape,
    ns: &str,
    sa: &str,
    node: Option<&str>,
) -> Result<Issued, tonic::Status> {
    let chain = s.issue(shape, ns, sa, node).await?;
    let leaf_der = pem::parse(&chain[0]).unwrap().into_contents();
    let (_, cert) = X509Certificate::from_der(&leaf_der).unwrap();
    let serial = colon_hex(cert.raw_serial());
    Ok(Issued {
        serial,
        leaf_der,
        chain,
    })
}

/// shop/cart (pilot-agent), shop/web (pilot-agent, node-a), pay/api (ztunnel, node-b) and
/// pay/db (ztunnel, node-a), in that order.
async fn four_callers(s: &SignerProcess) -> [Issued; 4] {
    [
        call(s, Shape::PilotAgent, "shop", "cart", None).await,
        call(s, Shape::PilotAgent, "shop", "web", Some("node-a")).await,
        call(s, Shape::Ztunnel, "pay", "api", Some("node-b")).await,
        call(s, Shape::Ztunnel, "pay", "db", Some("node-a")).await,
    ]
    .map(Result::unwrap)
}

/// Runs `istio-vault-ca <args> --config <the signer's config>`; its stdout.
fn cli(s: &SignerProcess, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_istio-vault-ca"))
        .args(args)
        .arg("--config")
        .arg(s.dir.path().join("config.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {stderr}");
    String::from_utf8(out.stdout).unwrap() + &stderr
}

/// Serials (lower-case colon hex) that the issuing mount's CRL lists, fetched from Vault.
async fn crl_serials(bao: &OpenBao) -> (Vec<String>, Vec<u8>) {
    let pem_text = support::http()
        .get(format!("{}/v1/{MOUNT}/crl/pem", bao.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let der = pem::parse(pem_text.trim()).unwrap().into_contents();
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
    let mut serials: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| colon_hex(r.raw_serial()))
        .collect();
    serials.sort();
    (serials, der)
}

/// Whether a rustls server given the roots and `crl` accepts `issued` as a client certificate
/// (ztunnel checks peers' leaves against the CRLs it loads the same way).
fn accepted_with_crl(ca_root: &[u8], crl: &[u8], issued: &Issued) -> bool {
    let pem_text = pem::encode(&pem::Pem::new("X509 CRL", crl.to_vec()));
    accepted_with_crls(ca_root, &pem_text, issued)
}

/// Calls until one is refused (the deny list is re-read every second); its status.
async fn refused_soon(
    s: &SignerProcess,
    shape: Shape,
    ns: &str,
    sa: &str,
    node: Option<&str>,
) -> tonic::Status {
    support::eventually_some("the deny list applies", async || {
        call(s, shape, ns, sa, node).await.err()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_by_serial_identity_namespace_and_node() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let ledger = "\n[ledger]\nflush_interval = \"200ms\"\ndeny_refresh = \"1s\"\n";
    let s = SignerProcess::start(&bao.addr, &setup, ledger, "info", issuer).await;
    let [cart, web, api, db] = four_callers(&s).await;
    let misc = call(&s, Shape::PilotAgent, "misc", "x", None)
        .await
        .unwrap();
    support::eventually("five records written", async || {
        let text = s.metrics().await;
        sample(
            &text,
            "istio_vault_ca_ledger_records_total{outcome=\"written\"}",
        ) == Some(5.0)
    })
    .await;
    let root = std::fs::read(setup.join("tls/root-cert.pem")).unwrap();

    // --dry-run lists exactly the node's certificates and changes nothing.
    let plan = cli(&s, &["revoke", "--node", "node-a", "--dry-run"]);
    assert!(
        plan.contains(&web.serial) && plan.contains(&db.serial),
        "{plan}"
    );
    for other in [&cart, &api, &misc] {
        assert!(!plan.contains(&other.serial), "{plan}");
    }
    assert!(crl_serials(&bao).await.0.is_empty());
    call(&s, Shape::PilotAgent, "other", "z", Some("node-a"))
        .await
        .unwrap();

    // By node: both revoked at Vault, and the node's callers get nothing new.
    let out = cli(
        &s,
        &["revoke", "--node", "node-a", "--reason", "keyCompromise"],
    );
    assert!(out.contains("2 certificate(s) revoked, 0 failed"), "{out}");
    assert!(
        !out.contains("did not rebuild"),
        "crl/rotate allowed by the policy: {out}"
    );
    let (listed, crl) = crl_serials(&bao).await;
    let mut want = vec![web.serial.clone(), db.serial.clone()];
    want.sort();
    assert_eq!(listed, want);
    assert!(!accepted_with_crl(&root, &crl, &web));
    assert!(!accepted_with_crl(&root, &crl, &db));
    assert!(accepted_with_crl(&root, &crl, &cart));
    assert!(accepted_with_crl(&root, &crl, &api));
    let denied = refused_soon(&s, Shape::PilotAgent, "other", "z", Some("node-a")).await;
    assert_eq!(
        denied.code(),
        Code::PermissionDenied,
        "{}",
        denied.message()
    );
    assert!(denied.message().contains("revoked"), "{}", denied.message());
    call(&s, Shape::Ztunnel, "pay", "api", Some("node-b"))
        .await
        .unwrap();

    // By identity, then by namespace.
    cli(
        &s,
        &["revoke", "--identity", &id("shop", "cart").to_string()],
    );
    let denied = refused_soon(&s, Shape::PilotAgent, "shop", "cart", None).await;
    assert_eq!(denied.code(), Code::PermissionDenied);
    call(&s, Shape::PilotAgent, "shop", "other", None)
        .await
        .unwrap();
    cli(&s, &["revoke", "--namespace", "pay"]);
    let denied = refused_soon(&s, Shape::PilotAgent, "pay", "new", Some("node-b")).await;
    assert_eq!(denied.code(), Code::PermissionDenied);

    // By serial: that certificate only; its identity may renew.
    cli(&s, &["revoke", "--serial", &misc.serial]);
    call(&s, Shape::PilotAgent, "misc", "x", None)
        .await
        .unwrap();

    let (listed, crl) = crl_serials(&bao).await;
    assert!(listed.contains(&cart.serial) && listed.contains(&misc.serial));
    assert!(
        listed.contains(&api.serial),
        "the namespace's earlier certificates too"
    );
    assert!(!accepted_with_crl(&root, &crl, &api));
    let metrics = s.metrics().await;
    assert!(
        sample(
            &metrics,
            "istio_vault_ca_refusals_total{reason=\"revoked\"}"
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{metrics}"
    );

    // unrevoke lifts the node's entry: its callers are served again (the revoked serials stay
    // revoked; the new certificate has a new serial).
    let out = cli(&s, &["unrevoke", "--node", "node-a"]);
    assert!(out.contains("lifted"), "{out}");
    let again = support::eventually_some("the node is served again", async || {
        call(&s, Shape::PilotAgent, "other", "z", Some("node-a"))
            .await
            .ok()
    })
    .await;
    assert!(!listed.contains(&again.serial));
    assert!(cli(&s, &["unrevoke", "--node", "node-a"]).contains("nothing to lift"));
}

/// Until a replica has read the deny list once, it issues nothing (Unavailable): a restart
/// must not open a window for revoked identities.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_issued_before_the_deny_list_is_read() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    // The signer's policy loses read access to the ledger: the deny list cannot be read.
    let policy = bao
        .api(
            "GET",
            "sys/policies/acl/istio-vault-ca",
            serde_json::Value::Null,
        )
        .await["data"]["policy"]
        .as_str()
        .unwrap()
        .replace("\"create\", \"update\", \"read\"", "\"create\", \"update\"")
        .replace("\"list\", \"delete\"", "\"delete\"");
    bao.api(
        "PUT",
        "sys/policies/acl/istio-vault-ca",
        serde_json::json!({ "policy": policy }),
    )
    .await;
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let ledger = "\n[ledger]\ndeny_refresh = \"1s\"\n";
    let s = SignerProcess::start(&bao.addr, &setup, ledger, "info", issuer).await;
    let refused = call(&s, Shape::PilotAgent, "shop", "cart", None)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(
        refused.message().contains("deny list"),
        "{}",
        refused.message()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        call(&s, Shape::PilotAgent, "shop", "cart", None)
            .await
            .is_err()
    );
}

/// Two replicas share one ledger and one Kubernetes API: a certificate issued by replica A is
/// found and revoked through replica B's configuration, both replicas then refuse the
/// identity, and each CRL set reaches every namespace's `istio-ca-crl` once, written by the
/// leader only (not once per replica).
///
/// Real: OpenBao, both signers and the CLI as processes. The Kubernetes API (ConfigMaps,
/// Leases) is the loopback server of `support::kube_api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_revokes_what_another_issued() {
    use support::kube_api::FakeApi;
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let key = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let same = DevIssuer::load(DEFAULT_ISSUER, key.key_pem()).unwrap();
    let kube = FakeApi::new(&[("default", false), ("shop", false)]);
    let server = kube.start().await;
    let dir = tempfile::tempdir().unwrap();
    // Each replica its own API credential, so the API server can tell who wrote.
    let extra = |replica: &str| {
        let kubeconfig = support::kubeconfig_with_token(dir.path(), replica, &server, replica);
        format!(
            "\n[ledger]\nflush_interval = \"200ms\"\ndeny_refresh = \"1s\"\n\
             [trust_distribution]\nkubeconfig = \"{}\"\ninterval = \"500ms\"\n\
             [crl]\nrefresh_interval = \"1s\"\n",
            kubeconfig.display()
        )
    };
    let a = SignerProcess::start(&bao.addr, &setup, &extra("replica-a"), "info", key).await;
    let b = SignerProcess::start(&bao.addr, &setup, &extra("replica-b"), "info", same).await;
    let issued = call(&a, Shape::Ztunnel, "shop", "cart", Some("node-a"))
        .await
        .unwrap();
    support::eventually("A's record written", async || {
        let text = a.metrics().await;
        sample(
            &text,
            "istio_vault_ca_ledger_records_total{outcome=\"written\"}",
        ) == Some(1.0)
    })
    .await;
    let out = cli(
        &b,
        &["revoke", "--identity", &id("shop", "cart").to_string()],
    );
    assert!(out.contains(&format!("revoked {}", issued.serial)), "{out}");
    assert_eq!(
        crl_serials(&bao).await.0,
        std::slice::from_ref(&issued.serial)
    );
    for replica in [&a, &b] {
        let denied = refused_soon(replica, Shape::PilotAgent, "shop", "cart", None).await;
        assert_eq!(denied.code(), Code::PermissionDenied);
    }
    support::eventually("the revocation is published", async || {
        ["default", "shop"].iter().all(|ns| {
            kube.crl(ns).is_some_and(|pem| {
                published_crls(&pem)
                    .values()
                    .any(|serials| serials.contains(&issued.serial))
            })
        })
    })
    .await;
    // Both replicas hold the same CRLs; only the leader wrote them, each value once per
    // namespace.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = kube.writes_of("istio-ca-crl");
    assert!(
        writes.len() >= 4,
        "two values in two namespaces: {writes:?}"
    );
    assert!(
        writes.values().all(|n| *n == 1),
        "a CRL value written more than once: {writes:?}"
    );
    assert_eq!(
        kube.writers_of("istio-ca-crl").len(),
        1,
        "one replica (the leader) writes"
    );
}

/// Two issuers on one mount (a second intermediate beside the setup's): a certificate of each
/// is revoked, and each issuer's CRL, fetched and checked as the signer will before publishing
/// it (`crl::check`: parses, names and is signed by its issuer, current), lists only its own
/// serial. Given both CRLs (`crl::bundle`, what `ca-crl.pem` will hold), a rustls verifier
/// refuses each revoked leaf and accepts the others of both issuers (istio #61075: a single
/// merged CRL would not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_issuer_keeps_its_own_crl() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let (first, second) = second_issuer(&bao).await;
    // Two leaves from each issuer, signed at Vault with the workload role.
    let mut leaves = Vec::new();
    for (issuer, sa) in [
        (&first, "a1"),
        (&first, "a2"),
        (&second, "b1"),
        (&second, "b2"),
    ] {
        let want = id("default", sa);
        let kc = client::generate_csr(Shape::PilotAgent, &want).unwrap();
        let data = bao
            .api(
                "POST",
                &format!("{MOUNT}/issuer/{issuer}/sign/{}", support::ROLE),
                serde_json::json!({"csr": kc.csr_pem, "uri_sans": want.to_string(), "ttl": "1h"}),
            )
            .await["data"]
            .clone();
        let chain: Vec<String> = vec![
            data["certificate"].as_str().unwrap().to_owned(),
            data["issuing_ca"].as_str().unwrap().to_owned(),
            String::new(),
        ];
        let leaf_der = pem::parse(&chain[0]).unwrap().into_contents();
        let serial = data["serial_number"].as_str().unwrap().to_owned();
        leaves.push(Issued {
            serial,
            leaf_der,
            chain,
        });
    }
    // The signer's own token revokes one of each and reads the issuers' CRLs.
    let vault = support::signer_vault(&bao.addr, &setup).await;
    let target = vault.target(MOUNT, support::ROLE, None).unwrap();
    for i in [0, 2] {
        let pem_text = &leaves[i].chain[0];
        assert!(vault.revoke(&target, pem_text).await.unwrap() > 0);
    }
    let now = support::now_unix();
    let mut crls = Vec::new();
    for issuer in vault.issuers(&target).await.unwrap() {
        if issuer.issuer_id != first && issuer.issuer_id != second {
            continue; // the root, imported beside them without its key
        }
        let der = vault.issuer_crl(&target, &issuer.issuer_id).await.unwrap();
        let issuer_der = pem::parse(&issuer.certificate).unwrap().into_contents();
        let checked = istio_vault_ca::crl::check(&der, &issuer_der, now).unwrap();
        let own = if issuer.issuer_id == first { 0 } else { 2 };
        assert_eq!(
            checked.revoked,
            [leaves[own].serial.clone()],
            "{}",
            issuer.issuer_id
        );
        // Not the CRL of the other issuer.
        let other = pem::parse(&leaves[2 - own].chain[1])
            .unwrap()
            .into_contents();
        assert_eq!(
            istio_vault_ca::crl::check(&der, &other, now),
            Err(istio_vault_ca::crl::CrlError::OtherIssuer)
        );
        crls.push(checked);
    }
    assert_eq!(crls.len(), 2);
    let ca_crl_pem = istio_vault_ca::crl::bundle(&crls);
    let root = std::fs::read(setup.join("tls/root-cert.pem")).unwrap();
    let verdicts: Vec<bool> = leaves
        .iter()
        .map(|l| accepted_with_crls(&root, &ca_crl_pem, l))
        .collect();
    assert_eq!(verdicts, [false, true, false, true]);
}

/// What a `ca-crl.pem` says: issuer DN → the serials its CRL lists (sorted); each issuer
/// once.
fn published_crls(ca_crl_pem: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for block in pem::parse_many(ca_crl_pem).unwrap() {
        assert_eq!(block.tag(), "X509 CRL");
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(block.contents())
                .unwrap();
        let mut serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| colon_hex(r.raw_serial()))
            .collect();
        serials.sort();
        let issuer = crl.issuer().to_string();
        assert!(
            out.insert(issuer.clone(), serials).is_none(),
            "{issuer} twice"
        );
    }
    out
}

/// The DN of the intermediate that issued `issued`.
fn issuer_dn(issued: &Issued) -> String {
    let der = pem::parse(&issued.chain[1]).unwrap().into_contents();
    X509Certificate::from_der(&der)
        .unwrap()
        .1
        .subject()
        .to_string()
}

/// CRL distribution end to end, the way ztunnel consumes it. Two targets on one mount, each
/// with its own issuer (`pay` is routed to the second intermediate); the signer publishes
/// every keyed issuer's CRL as `ca-crl.pem` in `istio-ca-crl` in every namespace, and the
/// served roots as ClusterTrustBundle `istio.io:istiod-ca:root-cert`. Revocations by node and
/// by serial reach the published CRLs under the right issuer; a rustls verifier given the
/// published roots and CRLs refuses exactly the revoked leaves. A restarted replica finds
/// the certificates issued before the restart in the ledger, revokes one by identity, then a
/// namespace, and the published CRLs follow.
///
/// Real: OpenBao, the signer and the CLI as processes, rustls. The Kubernetes API is the
/// loopback server of `support::kube_api` (real JSON shapes, list + watch, server-side apply).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_crls_follow_revocations() {
    use support::kube_api::FakeApi;
    let bao = OpenBao::start().await;
    let setup = bao.setup(&["--extra-role", &format!("{MOUNT}/second")]);
    let (_first, second) = second_issuer(&bao).await;
    // Role `second` (setup made it a workload role the signer may use) signs with the
    // second issuer, for target `second`.
    let mut role = bao
        .api(
            "GET",
            &format!("{MOUNT}/roles/second"),
            serde_json::Value::Null,
        )
        .await["data"]
        .clone();
    role["issuer_ref"] = serde_json::json!(second);
    bao.api("POST", &format!("{MOUNT}/roles/second"), role)
        .await;
    let api = FakeApi::new(&[("default", false), ("shop", false), ("pay", false)]);
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let extra = format!(
        r#"
[ledger]
flush_interval = "200ms"
deny_refresh = "1s"
[trust_distribution]
kubeconfig = "{kubeconfig}"
interval = "500ms"
cluster_trust_bundle = "root-cert"
[crl]
refresh_interval = "1s"
[[targets]]
name = "second"
mount = "{MOUNT}"
role = "second"
issuer = "{second}"
roots_file = "{root}"
[[routes]]
name = "pay"
namespaces = ["pay"]
target = "second"
"#,
        kubeconfig = kubeconfig.display(),
        root = setup.join("tls/root-cert.pem").display(),
    );
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let key = issuer.key_pem().to_owned();
    let mut s = SignerProcess::start(&bao.addr, &setup, &extra, "info", issuer).await;
    let [cart, web, api_leaf, db] = four_callers(&s).await;
    let (first_dn, second_dn) = (issuer_dn(&cart), issuer_dn(&db));
    assert_ne!(first_dn, second_dn, "pay is signed by the second issuer");
    assert_eq!(issuer_dn(&api_leaf), second_dn);
    assert_eq!(issuer_dn(&web), first_dn);
    let bundle = cart.chain.last().unwrap().clone();

    // Before any revocation: both keyed issuers' CRLs, empty, in every namespace (the root
    // on the mount has no key and no CRL), and the ClusterTrustBundle, field by field.
    let namespaces = ["default", "shop", "pay"];
    let published = async |want: &std::collections::BTreeMap<String, Vec<String>>| {
        namespaces
            .iter()
            .all(|ns| api.crl(ns).is_some_and(|pem| published_crls(&pem) == *want))
    };
    let mut want = std::collections::BTreeMap::from([
        (first_dn.clone(), Vec::new()),
        (second_dn.clone(), Vec::new()),
    ]);
    support::eventually("empty CRLs of both issuers published", async || {
        published(&want).await
    })
    .await;
    let cm = api.configmap("pay", "istio-ca-crl").unwrap();
    assert_eq!(cm["apiVersion"], "v1");
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"], "pay");
    assert_eq!(
        cm["data"].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["ca-crl.pem"]
    );
    let ctb = support::eventually_some("the ClusterTrustBundle is written", async || {
        api.cluster_trust_bundle("istio.io:istiod-ca:root-cert")
    })
    .await;
    assert_eq!(ctb["apiVersion"], "certificates.k8s.io/v1beta1");
    assert_eq!(ctb["kind"], "ClusterTrustBundle");
    assert_eq!(ctb["metadata"]["name"], "istio.io:istiod-ca:root-cert");
    assert_eq!(ctb["spec"]["signerName"], "istio.io/istiod-ca");
    assert_eq!(ctb["spec"]["trustBundle"], bundle.as_str());
    assert_eq!(api.root("pay").as_deref(), Some(bundle.as_str()));

    // By node: one leaf of each issuer, each listed under its own issuer only.
    support::eventually("four records written", async || {
        let text = s.metrics().await;
        sample(
            &text,
            "istio_vault_ca_ledger_records_total{outcome=\"written\"}",
        ) == Some(4.0)
    })
    .await;
    let out = cli(&s, &["revoke", "--node", "node-a"]);
    assert!(out.contains("2 certificate(s) revoked, 0 failed"), "{out}");
    want.insert(first_dn.clone(), vec![web.serial.clone()]);
    want.insert(second_dn.clone(), vec![db.serial.clone()]);
    support::eventually("the node's serials published", async || {
        published(&want).await
    })
    .await;
    let root = std::fs::read(setup.join("tls/root-cert.pem")).unwrap();
    let ca_crl = api.crl("shop").unwrap();
    let verdicts: Vec<bool> = [&cart, &web, &api_leaf, &db]
        .iter()
        .map(|l| accepted_with_crls(&root, &ca_crl, l))
        .collect();
    assert_eq!(verdicts, [true, false, true, false]);

    // By serial.
    cli(&s, &["revoke", "--serial", &cart.serial]);
    let mut first_revoked = vec![web.serial.clone(), cart.serial.clone()];
    first_revoked.sort();
    want.insert(first_dn.clone(), first_revoked);
    support::eventually("the serial published", async || published(&want).await).await;

    // A replica restarts (SIGTERM, a new process with the same configuration): the ledger
    // still knows what the old one issued, and the CRLs it publishes follow.
    s.signal("-TERM");
    s.wait_exit(Duration::from_secs(10)).await;
    let issuer = DevIssuer::load(DEFAULT_ISSUER, &key).unwrap();
    let s = SignerProcess::start(&bao.addr, &setup, &extra, "info", issuer).await;
    let plan = cli(
        &s,
        &[
            "revoke",
            "--identity",
            &id("pay", "api").to_string(),
            "--dry-run",
        ],
    );
    assert!(plan.contains(&api_leaf.serial), "{plan}");
    cli(&s, &["revoke", "--identity", &id("pay", "api").to_string()]);
    let mut second_revoked = vec![db.serial.clone(), api_leaf.serial.clone()];
    second_revoked.sort();
    want.insert(second_dn.clone(), second_revoked);
    support::eventually("the restarted replica publishes", async || {
        published(&want).await
    })
    .await;
    let ca_crl = api.crl("default").unwrap();
    let verdicts: Vec<bool> = [&cart, &web, &api_leaf, &db]
        .iter()
        .map(|l| accepted_with_crls(&root, &ca_crl, l))
        .collect();
    assert_eq!(verdicts, [false, false, false, false]);
    let fresh = call(&s, Shape::PilotAgent, "shop", "new", None)
        .await
        .unwrap();
    assert!(accepted_with_crls(&root, &ca_crl, &fresh));

    // By namespace: the new certificate too, and shop gets nothing new.
    support::eventually("the new record written", async || {
        let text = s.metrics().await;
        sample(
            &text,
            "istio_vault_ca_ledger_records_total{outcome=\"written\"}",
        ) == Some(1.0)
    })
    .await;
    cli(&s, &["revoke", "--namespace", "shop"]);
    let mut first_revoked = vec![
        web.serial.clone(),
        cart.serial.clone(),
        fresh.serial.clone(),
    ];
    first_revoked.sort();
    want.insert(first_dn.clone(), first_revoked);
    support::eventually("the namespace published", async || published(&want).await).await;
    assert!(!accepted_with_crls(&root, &api.crl("pay").unwrap(), &fresh));
    let denied = refused_soon(&s, Shape::PilotAgent, "shop", "newer", None).await;
    assert_eq!(denied.code(), Code::PermissionDenied);
    let metrics = s.metrics().await;
    assert_eq!(
        sample(&metrics, "istio_vault_ca_crl_publishable"),
        Some(1.0),
        "{metrics}"
    );
}

/// A mount whose CRLs live 8 s and are never rebuilt by Vault on its own (`auto_rebuild`
/// off): the signer asks for a rebuild once a CRL has passed half its lifetime, so the CRL
/// published in `istio-ca-crl` is renewed again and again and never seen expired.
///
/// Real: OpenBao, the signer as a process. The Kubernetes API is the loopback server of
/// `support::kube_api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crls_are_rebuilt_before_they_expire() {
    use support::kube_api::FakeApi;
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    bao.api(
        "POST",
        &format!("{MOUNT}/config/crl"),
        serde_json::json!({"expiry": "8s", "auto_rebuild": false}),
    )
    .await;
    bao.api(
        "GET",
        &format!("{MOUNT}/crl/rotate"),
        serde_json::Value::Null,
    )
    .await;
    let api = FakeApi::new(&[("default", false)]);
    let server = api.start().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &server);
    let extra = format!(
        "\n[trust_distribution]\nkubeconfig = \"{}\"\ninterval = \"500ms\"\n[crl]\nrefresh_interval = \"1s\"\n",
        kubeconfig.display()
    );
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let _s = SignerProcess::start(&bao.addr, &setup, &extra, "info", issuer).await;
    // Over three lifetimes, every CRL seen published is current, and they keep changing.
    let mut this_updates = std::collections::BTreeSet::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < until {
        if let Some(pem_text) = api.crl("default") {
            let der = pem::parse(pem_text.trim()).unwrap().into_contents();
            let (_, crl) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
            let next = crl.next_update().unwrap().timestamp();
            assert!(next > support::now_unix(), "an expired CRL is published");
            this_updates.insert(crl.last_update().timestamp());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        this_updates.len() >= 3,
        "rebuilt and republished before each expiry: {this_updates:?}"
    );
}

/// Adds a second intermediate, signed by the setup's root, to the workload mount beside the
/// setup's own; returns (the mount's default issuer, the new one).
async fn second_issuer(bao: &OpenBao) -> (String, String) {
    let csr = bao
        .api(
            "POST",
            &format!("{MOUNT}/intermediate/generate/internal"),
            serde_json::json!({"common_name": "second intermediate", "key_type": "ec", "key_bits": 256}),
        )
        .await["data"]["csr"]
        .clone();
    let cert = bao
        .api(
            "POST",
            "pki-root/root/sign-intermediate",
            serde_json::json!({"csr": csr, "ttl": "8760h", "common_name": "second intermediate"}),
        )
        .await["data"]["certificate"]
        .clone();
    let second = bao
        .api(
            "POST",
            &format!("{MOUNT}/intermediate/set-signed"),
            serde_json::json!({"certificate": cert}),
        )
        .await["data"]["imported_issuers"][0]
        .as_str()
        .unwrap()
        .to_owned();
    let first = bao
        .api(
            "GET",
            &format!("{MOUNT}/issuer/default/json"),
            serde_json::Value::Null,
        )
        .await["data"]["issuer_id"]
        .as_str()
        .unwrap()
        .to_owned();
    (first, second)
}

/// [`accepted_with_crl`] with every CRL of a `ca-crl.pem`.
fn accepted_with_crls(ca_root: &[u8], ca_crl_pem: &str, issued: &Issued) -> bool {
    use rustls::server::WebPkiClientVerifier;
    use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
    istio_vault_ca::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for der in pem::parse_many(ca_root).unwrap() {
        roots
            .add(CertificateDer::from(der.into_contents()))
            .unwrap();
    }
    let crls = pem::parse_many(ca_crl_pem)
        .unwrap()
        .into_iter()
        .map(|p| CertificateRevocationListDer::from(p.into_contents()));
    let verifier = WebPkiClientVerifier::builder(roots.into())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .unwrap();
    let intermediates: Vec<CertificateDer<'static>> = issued.chain[1..issued.chain.len() - 1]
        .iter()
        .map(|p| CertificateDer::from(pem::parse(p).unwrap().into_contents()))
        .collect();
    verifier
        .verify_client_cert(
            &CertificateDer::from(issued.leaf_der.clone()),
            &intermediates,
            UnixTime::now(),
        )
        .is_ok()
}
