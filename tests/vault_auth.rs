//! The signer's own Vault authentication against a real OpenBao: a short-lived token that must
//! be renewed, AppRole across its max TTL (renewal, then re-login), and JWT login with a
//! forced re-login after the signer's token is revoked. Requests succeed throughout.

use std::time::{Duration, Instant};

use istio_vault_ca::client::Shape;
use istio_vault_ca::config::{RoleId, VaultLogin};
use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
use support::{Env, OpenBao, id};

/// Issues a certificate every 300 ms for `period`; every one must succeed.
async fn keep_issuing(env: &Env, period: Duration) -> usize {
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    let end = Instant::now() + period;
    let mut n = 0;
    while Instant::now() < end {
        env.request(Shape::Ztunnel, &demo, &opts)
            .await
            .unwrap_or_else(|s| panic!("request {n} failed: {:?} {}", s.code(), s.message()));
        n += 1;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    n
}

/// Enables a JWT auth mount at `mount` that trusts `idp`'s key and issuer.
/// Revokes every token auth mount `mount` issued, then requests a certificate: the call gets
/// 403, the signer logs in again once and retries, the caller never sees the failure. Returns
/// the audit log's responses to `auth/<mount>/login` so far.
async fn relogin_after_revocation(env: &Env, mount: &str) -> Vec<String> {
    env.bao
        .api(
            "POST",
            &format!("sys/leases/revoke-prefix/auth/{mount}"),
            serde_json::json!({}),
        )
        .await;
    let demo = id("default", "demo");
    env.request(Shape::Ztunnel, &demo, &env.opts("default", "demo"))
        .await
        .expect("issued after a forced re-login");
    let path = format!("\"path\":\"auth/{mount}/login\"");
    std::fs::read_to_string(env.bao.audit_log())
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"type\":\"response\"") && l.contains(&path))
        .map(str::to_owned)
        .collect()
}

async fn enable_jwt_auth(bao: &OpenBao, mount: &str, idp: &DevIssuer) {
    bao.api(
        "POST",
        &format!("sys/auth/{mount}"),
        serde_json::json!({"type": "jwt"}),
    )
    .await;
    bao.api(
        "POST",
        &format!("auth/{mount}/config"),
        serde_json::json!({"jwt_validation_pubkeys": [idp.public_key_pem()], "bound_issuer": idp.issuer()}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_token_is_renewed() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let token = bao
        .api(
            "POST",
            "auth/token/create",
            serde_json::json!({"policies": ["istio-vault-ca"], "no_default_policy": true,
                               "ttl": "4s", "explicit_max_ttl": "120s", "renewable": true}),
        )
        .await["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let token_file = setup.join("short-token");
    std::fs::write(&token_file, &token).unwrap();
    let env = Env::with_bao(bao, setup, |c| {
        c.vault.token_file = Some(token_file.clone())
    })
    .await;
    // Three lifetimes of the original token.
    assert!(keep_issuing(&env, Duration::from_secs(12)).await >= 20);
    // An expired token would be a 403 here (`api` asserts success). The TTL itself is whole
    // seconds and may read 0 just before the next renewal, so it is not asserted.
    let lookup = env
        .bao
        .api(
            "POST",
            "auth/token/lookup",
            serde_json::json!({"token": token}),
        )
        .await;
    assert!(
        lookup["data"]["ttl"].is_u64(),
        "the token is still alive thanks to renewal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_renews_then_logs_in_again_past_max_ttl() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    bao.api(
        "POST",
        "sys/auth/approle",
        serde_json::json!({"type": "approle"}),
    )
    .await;
    bao.api(
        "POST",
        "auth/approle/role/signer",
        serde_json::json!({"token_policies": ["istio-vault-ca"], "token_ttl": "3s", "token_max_ttl": "7s"}),
    )
    .await;
    let role_id = bao
        .api(
            "GET",
            "auth/approle/role/signer/role-id",
            serde_json::Value::Null,
        )
        .await["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao
        .api(
            "POST",
            "auth/approle/role/signer/secret-id",
            serde_json::json!({}),
        )
        .await["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_file = setup.join("secret-id");
    std::fs::write(&secret_file, &secret_id).unwrap();
    let env = Env::with_bao(bao, setup, |c| {
        c.vault.token_file = None;
        c.vault.auth.login = VaultLogin::AppRole {
            role_id: RoleId::Value(role_id),
            secret_id_file: secret_file.clone(),
        };
    })
    .await;
    // Two max TTLs: renewals, then logins when renewal stops extending the token.
    assert!(keep_issuing(&env, Duration::from_secs(15)).await >= 25);
    let logins = std::fs::read_to_string(env.bao.audit_log())
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"request\"") && l.contains("\"path\":\"auth/approle/login\"")
        })
        .count();
    assert!(
        logins >= 2,
        "logged in again after the max TTL ({logins} logins)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_login_and_relogin_after_revocation() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    let signer_idp = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    enable_jwt_auth(&bao, "jwt", &signer_idp).await;
    bao.api(
        "POST",
        "auth/jwt/role/signer",
        serde_json::json!({"role_type": "jwt", "bound_audiences": ["vault"], "user_claim": "sub",
                           "token_policies": ["istio-vault-ca"], "token_ttl": "1h"}),
    )
    .await;
    let mut spec = TokenSpec::new("istio-system", "istio-vault-ca");
    spec.audiences = vec!["vault".into()];
    let jwt_file = setup.join("signer-jwt");
    std::fs::write(&jwt_file, signer_idp.token(&spec).unwrap()).unwrap();
    let env = Env::with_bao(bao, setup, |c| {
        c.vault.token_file = None;
        c.vault.auth.login = VaultLogin::Jwt {
            role: "signer".into(),
            jwt_file: jwt_file.clone(),
        };
        c.vault.auth.min_relogin_interval = Duration::ZERO;
    })
    .await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    env.request(Shape::PilotAgent, &demo, &opts)
        .await
        .expect("issued with the JWT-login token");

    // Revoke every token the jwt mount issued: the next call gets 403, the signer logs in
    // again once and retries; the caller never sees the failure.
    let logins = relogin_after_revocation(&env, "jwt").await;
    assert_eq!(logins.len(), 2);
}

/// Everything inside an OpenBao namespace: the setup script and the signer send
/// `X-Vault-Namespace` on every call (sign, issuers, token lookup and renewal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_inside_a_vault_namespace() {
    let bao = OpenBao::start().await;
    bao.api("POST", "sys/namespaces/team-a", serde_json::json!({}))
        .await;
    let setup = bao.setup(&["--namespace", "team-a"]);
    let env = Env::with_bao(bao, setup, |c| c.vault.namespace = Some("team-a".into())).await;
    assert!(keep_issuing(&env, Duration::from_millis(500)).await >= 1);
    // The PKI lives only in the namespace: the root namespace has no such mount.
    let root_mounts = env
        .bao
        .api("GET", "sys/mounts", serde_json::Value::Null)
        .await;
    assert!(root_mounts["data"].get("pki-istio/").is_none());
    assert!(env.bao.sign_calls() >= 1);
}

/// Delegated mode against OpenBao's JWT auth: the caller's token is exchanged for a Vault
/// token (once, then cached), and Vault's templated role only allows the caller's own SPIFFE
/// ID, from the token's claims. A caller Vault does not accept is refused with
/// PermissionDenied and nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegated_mode_signs_with_the_callers_vault_token() {
    let bao = OpenBao::start().await;
    let setup = bao.setup(&[]);
    // The workloads' token issuer, known to both the signer (JWKS) and Vault (public key).
    let workload_idp = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    enable_jwt_auth(&bao, "jwt-workloads", &workload_idp).await;
    bao.api(
        "POST",
        "auth/jwt-workloads/role/workload",
        serde_json::json!({
            "role_type": "jwt", "bound_audiences": ["istio-ca"], "user_claim": "sub",
            "bound_claims": {"/kubernetes.io/namespace": "default"},
            "claim_mappings": {"/kubernetes.io/namespace": "namespace", "/kubernetes.io/serviceaccount/name": "sa"},
            "token_type": "batch", "token_ttl": "10m", "token_policies": ["istio-delegated"],
        }),
    )
    .await;
    let accessor = bao.api("GET", "sys/auth", serde_json::Value::Null).await["data"]["jwt-workloads/"]["accessor"]
        .as_str()
        .unwrap()
        .to_owned();
    let alias =
        |field: &str| format!("{{{{identity.entity.aliases.{accessor}.metadata.{field}}}}}");
    let mut role = bao
        .api(
            "GET",
            &format!("{}/roles/{}", support::MOUNT, support::ROLE),
            serde_json::Value::Null,
        )
        .await["data"]
        .clone();
    role["allowed_uri_sans_template"] = true.into();
    role["allowed_uri_sans"] = serde_json::json!([format!(
        "spiffe://cluster.local/ns/{}/sa/{}",
        alias("namespace"),
        alias("sa")
    )]);
    bao.api(
        "POST",
        &format!("{}/roles/istio-delegated", support::MOUNT),
        role,
    )
    .await;
    bao.api(
        "PUT",
        "sys/policies/acl/istio-delegated",
        serde_json::json!({"policy": format!("path \"{}/sign/istio-delegated\" {{ capabilities = [\"update\"] }}", support::MOUNT)}),
    )
    .await;

    let mut env = Env::with_bao(bao, setup, |c| {
        c.vault.delegated = Some(istio_vault_ca::config::DelegatedConfig {
            mount: "jwt-workloads".into(),
            role: "workload".into(),
            sign_role: Some("istio-delegated".into()),
            cache_size: 100,
        });
    })
    .await;
    // The signer must trust the same workload issuer.
    env.shutdown().await;
    let jwks = env.dir.path().join("workloads-jwks.json");
    std::fs::write(&jwks, workload_idp.jwks_json()).unwrap();
    let mut config = env.config.clone();
    config.auth.jwt.jwks_file = Some(jwks);
    let signer = istio_vault_ca::app::start(config).await.unwrap();
    env.addr = format!("127.0.0.1:{}", signer.local_addr().port());

    let demo = id("default", "demo");
    let token = workload_idp
        .token(&TokenSpec::new("default", "demo"))
        .unwrap();
    let opts = istio_vault_ca::client::CallOptions {
        token: Some(token),
        ..env.opts("default", "demo")
    };
    for _ in 0..2 {
        let (chain, _) = env
            .request(Shape::PilotAgent, &demo, &opts)
            .await
            .expect("issued via delegation");
        assert_eq!(
            istio_vault_ca::client::inspect_chain(&chain)
                .unwrap()
                .identity,
            demo.to_string()
        );
    }
    let count = |path: &str| {
        std::fs::read_to_string(env.bao.audit_log())
            .unwrap()
            .lines()
            .filter(|l| {
                l.contains("\"type\":\"request\"") && l.contains(&format!("\"path\":\"{path}\""))
            })
            .count()
    };
    assert_eq!(
        count("auth/jwt-workloads/login"),
        1,
        "the exchanged token is cached"
    );
    assert_eq!(
        count(&format!("{}/sign/istio-delegated", support::MOUNT)),
        2
    );

    // A caller outside the Vault role's bound claims: Vault refuses the login.
    let other = id("other", "app");
    let other_opts = istio_vault_ca::client::CallOptions {
        token: Some(workload_idp.token(&TokenSpec::new("other", "app")).unwrap()),
        ..opts.clone()
    };
    let err = env
        .request(Shape::Ztunnel, &other, &other_opts)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::PermissionDenied,
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("Vault refused the caller's credentials"),
        "{}",
        err.message()
    );
    assert_eq!(
        count(&format!("{}/sign/istio-delegated", support::MOUNT)),
        2
    );
    signer.shutdown().await.unwrap();
}

/// TLS certificate auth (`auth/cert`, set up by `setup.py --cert-auth`), as SPIRE's Vault
/// plug-in offers: the signer has no token file; it logs in with the client certificate it
/// already presents to a mutual-TLS Vault listener, and logs in the same way again when its
/// token is revoked. A certificate Vault does not trust gets no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_login_with_the_client_certificate() {
    let (bao, mtls) = OpenBao::start_mutual_tls().await;
    let ca = mtls.ca_file.display().to_string();
    let setup = bao.setup(&["--cert-auth", &ca, "--cert-auth-names", "istio-vault-ca"]);
    let env = Env::with_bao(bao, setup, |c| {
        mtls.configure(c);
        c.vault.token_file = None;
        c.vault.auth.login = VaultLogin::Cert {
            role: Some("istio-vault-ca".into()),
        };
        c.vault.auth.min_relogin_interval = Duration::ZERO;
    })
    .await;
    let demo = id("default", "demo");
    let opts = env.opts("default", "demo");
    env.request(Shape::PilotAgent, &demo, &opts)
        .await
        .expect("issued with the cert-login token");

    let logins = relogin_after_revocation(&env, "cert").await;
    assert_eq!(logins.len(), 2, "two cert logins");
    assert!(
        logins
            .iter()
            .all(|l| l.contains("\"policies\":[\"istio-vault-ca\"]")),
        "each granted the signer's policy"
    );

    // A role that trusts another CA refuses this certificate.
    env.bao
        .api(
            "POST",
            "auth/cert/certs/other",
            serde_json::json!({"certificate": String::from_utf8(env.ca_pem.clone()).unwrap(),
                               "token_policies": ["istio-vault-ca"]}),
        )
        .await;
    let mut config = env.config.vault.clone();
    config.auth.login = VaultLogin::Cert {
        role: Some("other".into()),
    };
    let vault = istio_vault_ca::vault::VaultClient::new(&config).unwrap();
    let creds = istio_vault_ca::vault::Credentials::from_config(&config, |_| None).unwrap();
    let err = vault.authenticate(&creds).await.unwrap_err();
    assert!(
        matches!(
            err,
            istio_vault_ca::vault::VaultError::Rejected(_)
                | istio_vault_ca::vault::VaultError::Forbidden(_)
        ),
        "{err}"
    );
}

/// Two Vault servers laid out as docs/multiple-cas.md says: each logs the signer in with its
/// own JWT, projected with its own audience (`vault` for `[vault]`, `vault-team` for
/// `[vaults.team]`), and each login role binds its audience. Both servers sign; the JWT the
/// team's server receives at login, replayed at the main server's login role, is refused, so
/// whoever runs the team's server cannot obtain the signer's policy on the main one. The same
/// replay with the main server's own JWT succeeds (the replay path itself works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_jwt_sent_to_one_server_is_useless_at_another() {
    let main = OpenBao::start().await;
    let setup = main.setup(&[]);
    let team = OpenBao::start().await;
    team.setup(&[]);
    let idp = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    let mut jwt_files = Vec::new();
    for (bao, audience) in [(&main, "vault"), (&team, "vault-team")] {
        enable_jwt_auth(bao, "jwt", &idp).await;
        bao.api(
            "POST",
            "auth/jwt/role/signer",
            serde_json::json!({"role_type": "jwt", "bound_audiences": [audience],
                               "user_claim": "sub", "token_policies": ["istio-vault-ca"]}),
        )
        .await;
        let mut spec = TokenSpec::new("istio-system", "istio-vault-ca");
        spec.audiences = vec![audience.into()];
        let file = setup.join(format!("login-{audience}"));
        std::fs::write(&file, idp.token(&spec).unwrap()).unwrap();
        jwt_files.push(file);
    }
    let jwt_login = |file: &std::path::Path| {
        let mut auth = istio_vault_ca::config::VaultAuthConfig {
            login: VaultLogin::Jwt {
                role: "signer".into(),
                jwt_file: file.to_owned(),
            },
            ..Default::default()
        };
        auth.min_relogin_interval = Duration::ZERO;
        auth
    };
    let team_addr = team.addr.clone();
    let env = Env::with_bao(main, setup, |c| {
        c.vault.token_file = None;
        c.vault.auth = jwt_login(&jwt_files[0]);
        c.vaults.insert(
            "team".into(),
            istio_vault_ca::config::VaultConfig {
                addr: team_addr.parse().unwrap(),
                auth: jwt_login(&jwt_files[1]),
                ..Default::default()
            },
        );
        support::route_namespace_to_server(c, "team", "team");
    })
    .await;
    for (ns, sa) in [("default", "demo"), ("team", "api")] {
        env.request(Shape::PilotAgent, &id(ns, sa), &env.opts(ns, sa))
            .await
            .unwrap_or_else(|s| panic!("{ns}/{sa}: {s:?}"));
    }
    assert_eq!(
        team.sign_calls(),
        1,
        "the team's route signed on the team's server"
    );

    let replay = |file: &std::path::Path| {
        let jwt = std::fs::read_to_string(file).unwrap();
        let url = format!("{}/v1/auth/jwt/login", env.bao.addr);
        async move {
            let resp = support::http()
                .post(url)
                .json(&serde_json::json!({"role": "signer", "jwt": jwt}))
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, body) = replay(&jwt_files[1]).await;
    assert!(
        (400..500).contains(&status) && !body.contains("client_token"),
        "the team server's login JWT logged in at the main server: {status} {body}"
    );
    assert!(body.contains("aud"), "refused for its audience: {body}");
    let (status, body) = replay(&jwt_files[0]).await;
    assert_eq!(status, 200, "the main server's own JWT: {body}");
}
