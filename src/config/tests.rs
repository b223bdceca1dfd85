//! Unit tests of the parent module, in a file of their own so that module reads as its one
//! noun.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn required() -> Vec<(String, String)> {
    env(&[
        ("IVCA_SERVER__CERT_FILE", "/tls/tls.crt"),
        ("IVCA_SERVER__KEY_FILE", "/tls/tls.key"),
    ])
}

#[test]
fn defaults_with_required_keys() {
    let c = Config::load(None, required()).unwrap();
    assert_eq!(c.trust_domain.as_str(), "cluster.local");
    assert_eq!(c.auth.cluster_id, "Kubernetes");
    assert_eq!(c.auth.jwt.audiences, vec!["istio-ca"]);
    assert_eq!(c.ttl.default, Duration::from_secs(86400));
    assert_eq!(c.ttl.over_max, OverMax::Clamp);
    assert_eq!(c.csr.max_bytes, 16384);
    assert_eq!(c.server.workers, 0, "one serving thread per CPU");
    assert_eq!(c.server.worker_packing, crate::worker::Packing::DEFAULT);
    assert_eq!(c.server.limits.max_waiting_for_vault, 1024);
}

/// The keepalive must outlast the longest a refused connection is left unread, or the
/// signer would close connections it is only pacing; a zero interval would ping without
/// pause.
#[test]
fn http2_keepalive_outlasts_a_pause() {
    let load = |pairs: &[(&str, &str)]| {
        let mut e = required();
        e.extend(env(pairs));
        Config::load(None, e).map_err(|e| e.to_string())
    };
    assert!(load(&[("IVCA_SERVER__HTTP2_KEEPALIVE_TIMEOUT", "5s")]).is_ok());
    assert!(
        load(&[("IVCA_SERVER__HTTP2_KEEPALIVE_TIMEOUT", "3s")])
            .unwrap_err()
            .contains("server.http2_keepalive_timeout: must be at least 5s")
    );
    assert!(
        load(&[("IVCA_SERVER__HTTP2_KEEPALIVE_INTERVAL", "0s")])
            .unwrap_err()
            .contains("server.http2_keepalive_interval: must be positive")
    );
}

#[test]
fn file_then_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"
trust_domain = "mesh.example"
[server]
cert_file = "/a"
key_file = "/b"
request_timeout = "3s"
[ttl]
default = "6h"
max = "12h"
over_max = "reject"
"#,
    )
    .unwrap();
    let c = Config::load(
        Some(&path),
        env(&[
            ("IVCA_VAULT__ADDR", "https://vault.example:8200"),
            ("IVCA_CSR__MAX_BYTES", "8192"),
            ("IVCA_AUTH__JWT__AUDIENCES", r#"["a", "b"]"#),
            ("UNRELATED", "x"),
        ]),
    )
    .unwrap();
    assert_eq!(c.trust_domain.as_str(), "mesh.example");
    assert_eq!(c.server.request_timeout, Duration::from_secs(3));
    assert_eq!(c.ttl.max, Duration::from_secs(12 * 3600));
    assert_eq!(c.ttl.over_max, OverMax::Reject);
    assert_eq!(c.vault.addr.to_string(), "https://vault.example:8200");
    assert_eq!(c.csr.max_bytes, 8192);
    assert_eq!(c.auth.jwt.audiences, vec!["a", "b"]);
}

#[test]
fn tracing_off_by_default_and_validated() {
    let c = Config::load(None, required()).unwrap();
    assert!(c.tracing.otlp_endpoint.is_none());
    let mut e = required();
    e.extend(env(&[
        ("IVCA_TRACING__OTLP_ENDPOINT", "http://collector:4317"),
        ("IVCA_TRACING__SAMPLE_RATIO", "0.25"),
    ]));
    let c = Config::load(None, e).unwrap();
    assert_eq!(
        c.tracing.otlp_endpoint.as_deref(),
        Some("http://collector:4317")
    );
    assert_eq!(c.tracing.sample_ratio, 0.25);
    let mut e = required();
    e.push(("IVCA_TRACING__SAMPLE_RATIO".into(), "1".into()));
    assert_eq!(Config::load(None, e).unwrap().tracing.sample_ratio, 1.0);
    assert!(err_of(&[("IVCA_TRACING__SAMPLE_RATIO", "2")]).contains("tracing.sample_ratio"),);
    assert!(
        err_of(&[("IVCA_TRACING__OTLP_ENDPOINT", "collector:4317")])
            .contains("tracing.otlp_endpoint")
    );
    assert!(
        err_of(&[("IVCA_TRACING__OTLP_ENDPOINT", "https://collector:4317")])
            .contains("tracing.ca_file")
    );
}

/// `[ledger]` is off unless present; present, its defaults are the named constants and
/// each value is checked with its key.
#[test]
fn ledger_off_by_default_and_validated() {
    assert!(Config::load(None, required()).unwrap().ledger.is_none());
    let mut e = required();
    e.push(("IVCA_LEDGER__MOUNT".into(), DEFAULT_LEDGER_MOUNT.into()));
    let ledger = Config::load(None, e).unwrap().ledger.unwrap();
    assert_eq!(ledger.prefix, DEFAULT_LEDGER_PREFIX);
    assert_eq!(ledger.flush_interval, DEFAULT_LEDGER_FLUSH_INTERVAL);
    assert_eq!(ledger.max_batch, DEFAULT_LEDGER_MAX_BATCH);
    assert_eq!(ledger.partition, DEFAULT_LEDGER_PARTITION);
    for (key, value, says) in [
        ("IVCA_LEDGER__MOUNT", "/kv", "ledger.mount"),
        ("IVCA_LEDGER__PREFIX", "issued/../x", "ledger.prefix"),
        ("IVCA_LEDGER__PREFIX", "a//b", "ledger.prefix"),
        ("IVCA_LEDGER__VAULT", "team", "no [vaults.team] section"),
        ("IVCA_LEDGER__FLUSH_INTERVAL", "0s", "ledger.flush_interval"),
        ("IVCA_LEDGER__MAX_BATCH", "501", "ledger.max_batch"),
        ("IVCA_LEDGER__MAX_BATCH", "0", "ledger.max_batch"),
        ("IVCA_LEDGER__MAX_PENDING", "10", "ledger.max_pending"),
        ("IVCA_LEDGER__PARTITION", "500ms", "ledger.partition"),
    ] {
        let err = err_of(&[(key, value)]);
        assert!(err.contains(says), "{key}={value}: {err}");
    }
}

/// `[crl]` is off unless present; it needs `[trust_distribution]`, a name of its own and
/// sane sizes.
#[test]
fn crl_needs_trust_distribution() {
    assert!(Config::load(None, required()).unwrap().crl.is_none());
    let err = err_of(&[("IVCA_CRL__CONFIGMAP", DEFAULT_CRL_CONFIGMAP)]);
    assert!(err.contains("needs [trust_distribution]"), "{err}");
    let td = ("IVCA_TRUST_DISTRIBUTION__LEADER_ELECTION", "true");
    let mut e = required();
    e.extend(env(&[td, ("IVCA_CRL__CONFIGMAP", DEFAULT_CRL_CONFIGMAP)]));
    let crl = Config::load(None, e).unwrap().crl.unwrap();
    assert_eq!(crl.refresh_interval, DEFAULT_CRL_REFRESH_INTERVAL);
    assert_eq!(crl.max_bytes, DEFAULT_CRL_MAX_BYTES);
    for (key, value, says) in [
        ("IVCA_CRL__CONFIGMAP", "istio-ca-root-cert", "crl.configmap"),
        ("IVCA_CRL__REFRESH_INTERVAL", "0s", "crl.refresh_interval"),
        ("IVCA_CRL__MAX_BYTES", "2000000", "crl.max_bytes"),
    ] {
        let err = err_of(&[td, (key, value)]);
        assert!(err.contains(says), "{key}={value}: {err}");
    }
}

/// `vault.addr` lists a cluster's nodes as an array or comma-separated (the environment).
#[test]
fn vault_addr_lists_nodes() {
    let mut e = required();
    e.extend(env(&[(
        "IVCA_VAULT__ADDR",
        "http://10.0.0.1:8200, http://10.0.0.2:8200",
    )]));
    // Cleartext to another host only when asked for by name.
    assert!(
        Config::load(None, e.clone())
            .unwrap_err()
            .to_string()
            .starts_with("vault.addr: http://10.0.0.1:8200: plain http:// only to a loopback"),
    );
    e.push(("IVCA_VAULT__ALLOW_INSECURE_HTTP".into(), "true".into()));
    let c = Config::load(None, e).unwrap();
    assert_eq!(c.vault.addr.urls().len(), 2);
    assert_eq!(
        c.vault.addr.to_string(),
        "http://10.0.0.1:8200,http://10.0.0.2:8200"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[vault]\naddr = [\"https://a:8200\", \"https://b:8200\", \"https://c:8200\"]\n",
    )
    .unwrap();
    let c = Config::load(Some(&path), required()).unwrap();
    assert_eq!(c.vault.addr.urls()[2].as_str(), "https://c:8200/");
    for bad in [
        "http://a:8200,http://a:8200",
        "http://a:8200,https://b:8200",
        "http://a:8200,",
        "http://a:8200?x=1",
    ] {
        let msg = err_of(&[("IVCA_VAULT__ADDR", bad)]);
        assert!(msg.starts_with("vault.addr:"), "{bad}: {msg}");
    }
}

fn err_of(extra: &[(&str, &str)]) -> String {
    let mut e = required();
    e.extend(env(extra));
    Config::load(None, e).unwrap_err().to_string()
}

/// The issuer rules hold for remote clusters' issuers too, and the new sections validate
/// by key.
#[test]
fn every_issuer_and_limit_is_validated() {
    let remote = |jwt: &str| {
        let text = format!(
            "[server]\ncert_file = \"/c\"\nkey_file = \"/k\"\n[[auth.remote_clusters]]\nid = \"west\"\n[auth.remote_clusters.jwt]\n{jwt}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), vec![])
            .map(|_| ())
            .map_err(|e| e.unplaced().to_string())
    };
    let file = "jwks_file = \"/jwks\"\nissuer = \"https://west\"";
    assert!(remote(file).is_ok());
    assert_eq!(
        remote(&format!("{file}\nalgorithms = [\"HS256\"]")).unwrap_err(),
        "auth.remote_clusters[0].jwt.algorithms: HS256 is a shared-secret algorithm; only public-key algorithms are allowed"
    );
    assert!(
        remote(&format!("{file}\naudiences = []"))
            .unwrap_err()
            .starts_with("auth.remote_clusters[0].jwt.audiences:")
    );
    assert_eq!(
        remote("issuer = \"http://oidc.west.example\"").unwrap_err(),
        "auth.remote_clusters[0].jwt.issuer: must be https:// (plain http:// only on loopback)"
    );
    assert!(remote("issuer = \"http://127.0.0.1:8080\"").is_ok());
    assert!(
        err_of(&[("IVCA_AUTH__JWT__JWKS_URL", "http://10.0.0.1/keys")])
            .starts_with("auth.jwt.jwks_url: must be https://")
    );
    assert!(
        err_of(&[("IVCA_AUTH__TOKEN_REVIEW__AUDIENCES", "[]")])
            .starts_with("auth.token_review.audiences:")
    );
    assert!(
        err_of(&[
            ("IVCA_AUTH__CLIENT_CERTIFICATES", "true"),
            ("IVCA_VAULT__DELEGATED__ROLE", "r")
        ])
        .starts_with("vault.delegated: cannot be combined")
    );
    assert!(
        err_of(&[("IVCA_SERVER__LIMITS__MAX_CONNECTIONS", "0")])
            .starts_with("server.limits.max_connections:")
    );
    assert!(
        err_of(&[("IVCA_SERVER__LIMITS__MAX_CONNECTIONS_PER_PEER", "1000")])
            .starts_with("server.limits.max_connections_per_peer:")
    );
    assert!(
        err_of(&[("IVCA_SERVER__LIMITS__CONTROL_FRAME_BURST", "0")])
            .starts_with("server.limits.control_frame_burst: must be at least 1")
    );
    // A rate of 0 turns pacing for control frames off; it is not an error.
    let off = Config::load(
        None,
        [
            required(),
            env(&[("IVCA_SERVER__LIMITS__MAX_CONTROL_FRAMES_PER_SECOND", "0")]),
        ]
        .concat(),
    )
    .unwrap();
    assert!(off.server.limits.control_frame_rate().is_none());
    assert!(
        Config::load(None, required())
            .unwrap()
            .server
            .limits
            .control_frame_rate()
            .is_some()
    );
    assert!(
        err_of(&[(
            "IVCA_SERVER__TLS__CIPHER_SUITES",
            r#"["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]"#
        )])
        .starts_with("server.tls.cipher_suites: must include a TLS 1.3 suite")
    );
    assert!(
        err_of(&[("IVCA_SERVER__TLS__KEY_EXCHANGE_GROUPS", r#"["X448"]"#)])
            .starts_with("server.tls.key_exchange_groups")
    );
}

#[test]
fn errors_name_the_key() {
    assert!(err_of(&[("IVCA_VAULT__TIMEOUT", "soon")]).starts_with("vault.timeout:"));
    assert!(err_of(&[("IVCA_TRUST_DOMAIN", "Bad Domain")]).starts_with("trust_domain:"));
    assert!(err_of(&[("IVCA_SERVER__LISTEN", "nope")]).starts_with("server.listen:"));
    assert!(err_of(&[("IVCA_VAULT__BOGUS", "1")]).contains("bogus"));
    assert!(err_of(&[("IVCA_TTL__MAX", "1h")]).starts_with("ttl.max:"));
    assert!(
        err_of(&[("IVCA_SERVER__WORKER_PACKING", "0.9")])
            .starts_with("server.worker_packing: must be a share of a thread's time from 0 to 0.7")
    );
    assert!(
        err_of(&[("IVCA_SERVER__WORKERS", "5000")])
            .starts_with("server.workers: must be at most 1024")
    );
    assert!(
        err_of(&[("IVCA_CSR__ALLOWED_KEYS", r#"["rsa-1024"]"#)]).starts_with("csr.allowed_keys")
    );
    assert!(
        err_of(&[("IVCA_AUTH__JWT__ALGORITHMS", r#"["HS256"]"#)])
            .starts_with("auth.jwt.algorithms:")
    );
    assert!(err_of(&[("IVCA_VAULT__ADDR", "vault:8200")]).starts_with("vault.addr:"));
    assert!(
            err_of(&[(
                "IVCA_AUTH__IMPERSONATION__TRUSTED_NODE_ACCOUNTS",
                r#"["ztunnel"]"#
            )])
            .starts_with(
                r#"auth.impersonation.trusted_node_accounts[0]: "ztunnel" is not namespace/serviceaccount"#
            )
        );
    // What a login method needs is checked as [vault.auth] is read: the section is named.
    assert_eq!(
        err_of(&[("IVCA_VAULT__AUTH__METHOD", "approle")]),
        "vault.auth: approle needs role_id or role_id_file (set by IVCA_VAULT__AUTH__METHOD)"
    );
    assert_eq!(
        err_of(&[("IVCA_VAULT__AUTH__METHOD", "kubernetes")]),
        "vault.auth: role is required for kubernetes login (set by IVCA_VAULT__AUTH__METHOD)"
    );
    assert_eq!(
        err_of(&[
            ("IVCA_VAULT__AUTH__METHOD", "jwt"),
            ("IVCA_VAULT__AUTH__ROLE", "r")
        ]),
        "vault.auth: jwt_file is required for jwt login (set by IVCA_VAULT__AUTH__METHOD)"
    );
    // A key the method does not read is refused, not ignored.
    assert_eq!(
        err_of(&[("IVCA_VAULT__AUTH__ROLE", "r")]),
        "vault.auth: role is not used by token login (set by IVCA_VAULT__AUTH__ROLE)"
    );
    assert!(err_of(&[("IVCA_VAULT__AUTH__METHOD", "ldap")]).starts_with("vault.auth.method:"));
    assert!(err_of(&[("IVCA_VAULT__AUTH__METHOD", "cert")]).starts_with("vault.client_cert_file:"));
    assert!(
        err_of(&[
            ("IVCA_VAULT__AUTH__METHOD", "cert"),
            ("IVCA_VAULT__CLIENT_CERT_FILE", "/c.pem"),
            ("IVCA_VAULT__CLIENT_KEY_FILE", "/c.key"),
        ])
        .starts_with("vault.addr:"),
        "cert login over plain HTTP"
    );
    assert_eq!(
        err_of(&[(
            "IVCA_TRUST_DISTRIBUTION__NAMESPACE_SELECTOR",
            "team in infra"
        )]),
        r#"trust_distribution.namespace_selector: "team in infra" is not a label selector requirement (set by IVCA_TRUST_DISTRIBUTION__NAMESPACE_SELECTOR)"#
    );
    // A variable's typo is reported with the variable's name.
    let typo = err_of(&[("IVCA_VAULT__TOKN_FILE", "/x")]);
    assert!(
        typo.starts_with("vault.tokn_file: unknown key `tokn_file`; did you mean `token_file`?")
            && typo.ends_with("(set by IVCA_VAULT__TOKN_FILE)")
            && !typo.contains('\n'),
        "{typo}"
    );
    // TOML syntax errors say where.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "trust_domain = \"a\"\n[server\nlisten = 1\n").unwrap();
    let syntax = Config::load(Some(&bad), vec![]).unwrap_err().to_string();
    assert!(
        syntax.starts_with(&format!("{}:2:8: not valid TOML: ", bad.display())),
        "{syntax}"
    );
    // A selector is parsed as it is read: a bad one names its key.
    std::fs::write(
        &bad,
        "[[routes]]\nname = \"r\"\ntarget = \"default\"\nnamespace_selector = \"a in b\"\n",
    )
    .unwrap();
    let selector = Config::load(Some(&bad), required()).unwrap_err();
    assert!(
        selector
            .unplaced()
            .to_string()
            .starts_with("routes[0].namespace_selector: "),
        "{selector}"
    );
    // So do bad values, for `serve` too (check-config reports them all).
    std::fs::write(&bad, "[vault]\ntimeout = \"soon\"\n").unwrap();
    let value = Config::load(Some(&bad), vec![]).unwrap_err().to_string();
    assert!(
        value.starts_with(&format!("{}:2:11: vault.timeout: ", bad.display())),
        "{value}"
    );
    let missing = Config::load(None, vec![]).unwrap_err().to_string();
    assert_eq!(
        missing,
        "server.cert_file: is required (or configure server.self_issued)"
    );
    let remote = |distribute_to: &str, kubeconfig: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            format!(
                r#"
[[auth.remote_clusters]]
id = "west"
{kubeconfig}
[auth.remote_clusters.jwt]
issuer = "https://oidc.west.example"
[trust_distribution]
remote_clusters = ["{distribute_to}"]
"#
            ),
        )
        .unwrap();
        Config::load(Some(&file), required()).map_err(|e| e.unplaced().to_string())
    };
    let with_kc = r#"kubeconfig = "/etc/west/kubeconfig""#;
    assert_eq!(
        remote("west", with_kc)
            .unwrap()
            .trust_distribution
            .unwrap()
            .remote_clusters,
        ["west"]
    );
    assert_eq!(
        remote("east", with_kc).unwrap_err(),
        r#"trust_distribution.remote_clusters[0]: "east" is not an auth.remote_clusters id"#
    );
    assert_eq!(
        remote("west", "").unwrap_err(),
        r#"trust_distribution.remote_clusters[0]: auth.remote_clusters "west" has no kubeconfig"#
    );
    // A remote cluster's tokens are checked one way: jwt or token_review, never both or none.
    let verifier = |tables: &str| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            format!("[[auth.remote_clusters]]\nid = \"west\"\n{tables}"),
        )
        .unwrap();
        Config::load(Some(&file), required()).map_err(|e| e.unplaced().to_string())
    };
    let jwt = "[auth.remote_clusters.jwt]\nissuer = \"https://oidc.west.example\"\n";
    let review = "[auth.remote_clusters.token_review]\nkubeconfig = \"/k\"\n";
    for tables in ["", &format!("{jwt}{review}")] {
        assert_eq!(
            verifier(tables).unwrap_err(),
            "auth.remote_clusters[0]: set exactly one of jwt or token_review"
        );
    }
    let config = verifier(review).unwrap();
    let clusters = config.auth.clusters();
    assert_eq!(clusters.len(), 2);
    assert!(matches!(
        clusters[0],
        ("Kubernetes", CallerVerifier::Jwt(_))
    ));
    assert!(matches!(
        clusters[1],
        ("west", CallerVerifier::TokenReview(_))
    ));
    // The API servers the pod caches and trust distribution reach: the local one through the
    // feature's own kubeconfig, a remote through its TokenReview kubeconfig.
    assert_eq!(
        config.api_servers(Some(Path::new("/local"))),
        [
            ApiServer {
                cluster: "Kubernetes".into(),
                kubeconfig: Some("/local".into())
            },
            ApiServer {
                cluster: "west".into(),
                kubeconfig: Some("/k".into())
            }
        ]
    );
    // A remote checked by JWT alone has no API server to reach.
    assert_eq!(verifier(jwt).unwrap().api_servers(None).len(), 1);
    let self_issued = Config::load(None, env(&[("IVCA_SERVER__SELF_ISSUED__ROLE", "serving")]));
    assert!(
        self_issued
            .unwrap_err()
            .to_string()
            .starts_with("server.self_issued.names:")
    );
}

#[test]
fn other_vault_servers_are_checked_by_the_rules_of_vault_and_named_by_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let load = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Config::load(Some(&file), required()).map_err(|e| e.unplaced().to_string())
    };
    let ok = load(
        r#"
[vaults.team]
addr = "https://team-vault:8200, https://team-vault-2:8200"
token_file = "/team/token"
[[targets]]
name = "team"
vault = "team"
mount = "pki-team"
role = "workload"
trust = "follow"
"#,
    )
    .unwrap();
    assert_eq!(ok.vaults["team"].addr.urls().len(), 2);
    assert_eq!(ok.targets[0].vault.as_deref(), Some("team"));
    assert!(
        ok.referenced_files()
            .iter()
            .any(|(key, _)| key == "vaults.team.token_file")
    );
    assert_eq!(
        load("[vaults.team]\ntoken_file = \"/t\"\ntimeout = \"0s\"\n").unwrap_err(),
        "vaults.team.timeout: must be positive"
    );
    assert!(
        load("[vaults.team]\n")
            .unwrap_err()
            .starts_with("vaults.team.token_file: is required for token login")
    );
    assert!(
            load("[vaults.team]\ntoken_file = \"/t\"\n[vaults.team.delegated]\nmount = \"jwt\"\nrole = \"r\"\n")
                .unwrap_err()
                .starts_with("vaults.team.delegated:")
        );
    let unknown = "[[targets]]\nname = \"t\"\nvault = \"nope\"\nmount = \"m\"\nrole = \"r\"\ntrust = \"follow\"\n";
    assert!(load(unknown).unwrap_err().starts_with("targets[0].vault:"));
    let delegated = format!(
        "[vaults.team]\ntoken_file = \"/t\"\n[vault.delegated]\nmount = \"jwt\"\nrole = \"r\"\n{}",
        unknown.replace("nope", "team")
    );
    assert!(
        load(&delegated)
            .unwrap_err()
            .starts_with("targets[0].vault:")
    );
}

/// A login secret read for two servers is refused unless both opt in: the same token
/// file, the same JWT file, and the pod's own service-account token that `kubernetes`
/// login falls back to. Separate files (one projected token per server) pass.
#[test]
fn one_login_secret_is_never_sent_to_two_servers_unless_both_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    let load = |text: &str| {
        std::fs::write(&file, text).unwrap();
        Config::load(Some(&file), required()).map_err(|e| e.unplaced().to_string())
    };
    let k8s = |name: &str, jwt: Option<&str>, shared: bool| {
        let jwt = jwt
            .map(|j| format!("jwt_file = \"{j}\"\n"))
            .unwrap_or_default();
        format!(
            "[{name}.auth]\nmethod = \"kubernetes\"\nrole = \"r\"\n{jwt}shared_login = {shared}\n"
        )
    };
    let two = |a: &str, b: &str| format!("{a}{b}");
    let refused = [
        two(
            "[vault]\ntoken_file = \"/t\"\n",
            "[vaults.team]\ntoken_file = \"/t\"\n",
        ),
        two(
            &k8s("vault", Some("/j"), false),
            &k8s("vaults.team", Some("/j"), false),
        ),
        two(&k8s("vault", None, false), &k8s("vaults.team", None, false)),
        two(
            &k8s("vault", Some("/j"), true),
            &k8s("vaults.team", Some("/j"), false),
        ),
    ];
    for text in &refused {
        let e = load(text).unwrap_err();
        assert!(e.starts_with("vaults.team."), "{text}: {e}");
        assert!(e.contains("is also [vault]'s login secret"), "{text}: {e}");
    }
    for text in [
        two(
            &k8s("vault", Some("/a"), false),
            &k8s("vaults.team", Some("/b"), false),
        ),
        two(
            &k8s("vault", Some("/j"), true),
            &k8s("vaults.team", Some("/j"), true),
        ),
    ] {
        load(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
}
