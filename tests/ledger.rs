//! The issued-certificate ledger: every certificate handed out is recorded in a KV v2 mount of
//! the same Vault, in batches, and the records survive the signer.
//!
//! Real parts: OpenBao (dev server; the ledger's mount and policy made by
//! `deploy/vault/setup.py`), the signer as its own process (so SIGTERM and SIGKILL are real
//! signals), TLS and gRPC clients shaped like pilot-agent and ztunnel. The ledger is read back
//! with the signer's own Vault token (its policy must allow it) through `LedgerStore`, and
//! each record is compared with the certificate the caller received.

use std::path::Path;
use std::time::Duration;

use istio_vault_ca::client::Shape;
use istio_vault_ca::config::LedgerConfig;
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer};
use istio_vault_ca::ledger::{LedgerStore, Record};
use support::process::SignerProcess;
use support::{OpenBao, id, sample};
use x509_parser::prelude::{FromDer, ParsedExtension, X509Certificate};

/// A signer with `[ledger]` (`extra` under it) on `bao`.
async fn signer(bao: &OpenBao, setup: &Path, ledger: &str, issuer: DevIssuer) -> SignerProcess {
    let extra = format!("\n[ledger]\n{ledger}\n");
    SignerProcess::start(&bao.addr, setup, &extra, "info", issuer).await
}

/// The ledger as an operator's tool reads it, with the signer's token.
async fn store(bao: &OpenBao, setup: &Path) -> LedgerStore {
    let vault = support::signer_vault(&bao.addr, setup).await;
    LedgerStore::new(vault, &LedgerConfig::default())
}

/// One issued certificate as the caller saw it.
struct Got {
    identity: String,
    chain: Vec<String>,
    node: Option<String>,
}

/// One call of `shape` for `ns/sa`, with a token bound to a pod on `node` when given.
async fn issue(s: &SignerProcess, shape: Shape, ns: &str, sa: &str, node: Option<&str>) -> Got {
    Got {
        identity: id(ns, sa).to_string(),
        chain: s.issue(shape, ns, sa, node).await.unwrap(),
        node: node.map(str::to_owned),
    }
}

fn der(pem_text: &str) -> Vec<u8> {
    pem::parse(pem_text).unwrap().into_contents()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The record of `got` in `records`, checked field by field against the certificate.
fn check_recorded(records: &[Record], got: &Got) {
    let leaf = der(&got.chain[0]);
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let serial = istio_vault_ca::serial::colon_hex(cert.raw_serial());
    let matching: Vec<&Record> = records.iter().filter(|r| r.serial == serial).collect();
    assert_eq!(
        matching.len(),
        1,
        "one record of {serial} ({})",
        got.identity
    );
    let r = matching[0];
    assert_eq!(der(&r.certificate), leaf, "the recorded PEM is the leaf");
    assert_eq!(r.identity, got.identity);
    let (ns, sa) = {
        let mut parts = got.identity.rsplit('/');
        let sa = parts.next().unwrap();
        parts.next();
        (parts.next().unwrap(), sa)
    };
    assert_eq!((r.namespace.as_str(), r.service_account.as_str()), (ns, sa));
    assert_eq!(r.caller, got.identity, "each caller asked for itself");
    assert_eq!(r.node, got.node);
    assert_eq!(r.target, "default");
    assert_eq!(r.not_after, cert.validity().not_after.timestamp());
    assert_eq!(r.not_before, cert.validity().not_before.timestamp());
    // The issuer's key identifier is the issuing CA's (chain[1]) subject key identifier.
    let issuer_der = der(&got.chain[1]);
    let (_, issuer) = X509Certificate::from_der(&issuer_der).unwrap();
    let ski = issuer
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(hex(k.0)),
            _ => None,
        })
        .unwrap();
    assert_eq!(r.issuer_key_id, ski);
}

/// Certificates of both client shapes, some with pod-bound tokens naming a node, are each
/// recorded once with the PEM the caller received; a SIGTERM right after the last answer
/// still writes every record before the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_issued_certificate_is_recorded_and_a_shutdown_loses_none() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let issuer = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    // A long interval: only the shutdown's final write can have written the last batch.
    let mut s = signer(&bao, &setup, "flush_interval = \"30s\"", issuer).await;
    let mut got = Vec::new();
    for (i, shape) in [Shape::PilotAgent, Shape::Ztunnel]
        .into_iter()
        .cycle()
        .take(6)
        .enumerate()
    {
        let node = (i % 2 == 1).then_some("node-a");
        got.push(
            issue(
                &s,
                shape,
                &format!("ns-{}", i % 3),
                &format!("sa-{i}"),
                node,
            )
            .await,
        );
    }
    s.signal("-TERM");
    assert!(s.wait_exit(Duration::from_secs(20)).await.success());
    assert!(
        s.log().contains("issued-certificate ledger written"),
        "{}",
        s.log()
    );
    let records = store(&bao, &setup)
        .await
        .live(support::now_unix())
        .await
        .unwrap();
    assert_eq!(records.len(), got.len(), "{records:#?}");
    for g in &got {
        check_recorded(&records, g);
    }

    // The operator's view: `istio-vault-ca ledger` with the signer's own config.
    let config = s.dir.path().join("config.toml");
    let serials = |by: &[&str]| -> Vec<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_istio-vault-ca"))
            .args(["ledger", "--json", "--config"])
            .arg(&config)
            .args(by)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut serials: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Record>(l).unwrap().serial)
            .collect();
        serials.sort();
        serials
    };
    let expect = |pick: &dyn Fn(&Record) -> bool| -> Vec<String> {
        let mut v: Vec<String> = records
            .iter()
            .filter(|r| pick(r))
            .map(|r| r.serial.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(serials(&[]).len(), 6);
    assert_eq!(
        serials(&["--node", "node-a"]),
        expect(&|r| r.node.as_deref() == Some("node-a"))
    );
    assert_eq!(serials(&["--node", "node-a"]).len(), 3);
    assert_eq!(
        serials(&["--namespace", "ns-1"]),
        expect(&|r| r.namespace == "ns-1")
    );
    assert_eq!(serials(&["--namespace", "ns-1"]).len(), 2);
    let one = &records[0];
    assert_eq!(
        serials(&["--identity", &one.identity]),
        std::slice::from_ref(&one.serial)
    );
    assert_eq!(
        serials(&["--serial", &one.serial.to_uppercase()]),
        std::slice::from_ref(&one.serial)
    );
    assert!(serials(&["--node", "node-z"]).is_empty());
}

/// The loss window: a SIGKILL loses at most what was queued in the last `flush_interval` (and
/// a write in flight). Certificates answered before the last flush are all in the ledger
/// after the kill; the restarted signer goes on recording next to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loses_at_most_the_last_flush_interval() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let key = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let same = DevIssuer::load(DEFAULT_ISSUER, key.key_pem()).unwrap();
    let flush = "flush_interval = \"2s\"";
    let s = signer(&bao, &setup, flush, key).await;
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(issue(&s, Shape::PilotAgent, "before", &format!("sa-{i}"), None).await);
    }
    // Written once the metrics say so (at most one flush interval later).
    support::eventually("the first batch is written", async || {
        let text = s.metrics().await;
        sample(
            &text,
            "istio_vault_ca_ledger_records_total{outcome=\"written\"}",
        ) == Some(5.0)
    })
    .await;
    let mut after = Vec::new();
    for i in 0..5 {
        after.push(
            issue(
                &s,
                Shape::Ztunnel,
                "after",
                &format!("sa-{i}"),
                Some("node-b"),
            )
            .await,
        );
    }
    s.signal("-KILL");
    let store = store(&bao, &setup).await;
    let records = store.live(support::now_unix()).await.unwrap();
    for g in &before {
        check_recorded(&records, g);
    }
    let lost = after
        .iter()
        .filter(|g| {
            !records
                .iter()
                .any(|r| der(&r.certificate) == der(&g.chain[0]))
        })
        .count();
    eprintln!(
        "loss window: {lost} of the 5 certificates answered within the flush interval before SIGKILL were not recorded"
    );
    assert_eq!(records.len(), before.len() + after.len() - lost);

    let issuer = DevIssuer::load(DEFAULT_ISSUER, same.key_pem()).unwrap();
    let mut s = signer(&bao, &setup, flush, issuer).await;
    let again = issue(&s, Shape::PilotAgent, "again", "sa", Some("node-c")).await;
    s.signal("-TERM");
    assert!(s.wait_exit(Duration::from_secs(20)).await.success());
    let records = store.live(support::now_unix()).await.unwrap();
    check_recorded(&records, &again);
    for g in &before {
        check_recorded(&records, g);
    }
}

/// Records are filed by NotAfter; a window whose end has passed is deleted whole, live ones
/// stay. (The store against OpenBao directly: pruning runs on its own timer in the signer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_windows_are_pruned_and_live_ones_kept() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let vault = support::signer_vault(&bao.addr, &setup).await;
    let ledger = LedgerConfig {
        partition: Duration::from_secs(60),
        ..LedgerConfig::default()
    };
    let store = LedgerStore::new(vault, &ledger);
    let now = support::now_unix();
    let record = |serial: &str, not_after: i64| Record {
        serial: serial.into(),
        identity: "spiffe://cluster.local/ns/a/sa/b".into(),
        namespace: "a".into(),
        service_account: "b".into(),
        caller: "spiffe://cluster.local/ns/a/sa/b".into(),
        caller_pod: None,
        node: None,
        target: "default".into(),
        route: "default".into(),
        issuer_key_id: "00".into(),
        issued_at: now - 7200,
        not_before: now - 7200,
        not_after,
        certificate: String::new(),
    };
    // A full batch (ledger.max_batch records, PEM-sized) passes OpenBao's request limits
    // (at most 1,000 JSON strings per body, 32 MiB).
    let full: Vec<Record> = (0..LedgerConfig::default().max_batch)
        .map(|i| Record {
            certificate: "A".repeat(900),
            ..record(&format!("f{i}"), now + 7200)
        })
        .collect();
    store.write("replica-full", &full).await.unwrap();
    assert_eq!(store.live(now).await.unwrap(), full);
    assert_eq!(store.prune(now + 7200 + 120).await.unwrap(), 1);
    let expired = [record("01", now - 3600), record("02", now - 120)];
    let live = [record("03", now + 30), record("04", now + 3600)];
    store.write("replica-1", &expired).await.unwrap();
    store.write("replica-2", &live).await.unwrap();
    store
        .write("replica-1-b", &[record("05", now + 3600)])
        .await
        .unwrap();
    assert_eq!(store.windows().await.unwrap().len(), 4);
    // Two windows have passed: their batches go; the others stay.
    assert_eq!(store.prune(now).await.unwrap(), 2);
    let windows = store.windows().await.unwrap();
    assert_eq!(windows.len(), 2, "{windows:?}");
    assert!(windows.iter().all(|w| w + 60 > now));
    let mut serials: Vec<String> = store
        .live(now)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.serial)
        .collect();
    serials.sort();
    assert_eq!(serials, ["03", "04", "05"]);
    // Nothing left to prune.
    assert_eq!(store.prune(now).await.unwrap(), 0);
}
