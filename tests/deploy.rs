//! The deployment artefacts are checked, not just shipped: every Kustomize overlay renders
//! (`kubectl kustomize`) and validates strictly against the Kubernetes schemas
//! (`kubernetes-validate`, installed by scripts/test.sh); every shipped `config.toml` loads in
//! the signer (`check-config --offline`, as an operator checks one off the cluster); and `setup.py --kubernetes-auth` configures Kubernetes auth on a real OpenBao.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn overlays() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    dirs.sort();
    dirs
}

/// `kubectl kustomize dir`: the rendered YAML.
fn render(dir: &Path) -> String {
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (with kustomize) must be installed");
    assert!(
        rendered.status.success(),
        "{}: kubectl kustomize failed: {}",
        dir.display(),
        String::from_utf8_lossy(&rendered.stderr)
    );
    String::from_utf8(rendered.stdout).unwrap()
}

/// Validates rendered manifests strictly against the Kubernetes schemas.
fn validate(name: &str, yaml: &str) {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let validated = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        validated.status.success(),
        "{name}: schema validation failed (pip install kubernetes-validate==1.37.0):\n{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );
}

#[test]
fn every_overlay_renders_and_validates() {
    let overlays = overlays();
    assert!(
        overlays.len() >= 2,
        "single-cluster and self-issued overlays"
    );
    for dir in overlays {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let yaml = render(&dir);
        for kind in [
            "kind: Deployment",
            "kind: Service",
            "kind: ServiceAccount",
            "kind: PodDisruptionBudget",
            "kind: HorizontalPodAutoscaler",
            "kind: NetworkPolicy",
            "kind: ConfigMap",
            "path: /readyz",
            "path: /healthz",
            "containerPort: 15012",
            "containerPort: 15014",
            "readOnlyRootFilesystem: true",
        ] {
            assert!(
                yaml.contains(kind),
                "{name}: rendered manifests lack {kind:?}"
            );
        }
        validate(&name, &yaml);
    }
}

/// What a remote cluster applies for a signer running elsewhere: its service account, token
/// Secret and the three features' permissions.
#[test]
fn remote_cluster_access_renders_and_validates() {
    let yaml = render(&deploy_dir().join("remote-cluster"));
    for needle in [
        "name: istio-vault-ca-remote",
        "type: kubernetes.io/service-account-token",
        "name: system:auth-delegator",
        "resources:\n  - pods",
        "resources:\n  - configmaps",
        "namespace: istio-system",
    ] {
        assert!(
            yaml.contains(needle),
            "remote-cluster lacks {needle:?}:\n{yaml}"
        );
    }
    validate("remote-cluster", &yaml);
}

/// Rendered YAML as JSON documents (PyYAML comes with kubernetes-validate).
fn documents(yaml: &str) -> Vec<serde_json::Value> {
    let script = r#"
import json, sys, yaml
print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Least privilege in what the manifests grant: every ConfigMap permission but `create` is
/// limited to `istio-ca-root-cert` and `istio-ca-crl` (in every overlay and in remote-cluster access), no role
/// reads Secrets, and the admin port (metrics) is not open to every pod.
#[test]
fn manifests_grant_least_privilege() {
    let mut rendered: Vec<(String, String)> = overlays()
        .into_iter()
        .map(|d| {
            (
                d.file_name().unwrap().to_string_lossy().to_string(),
                render(&d),
            )
        })
        .collect();
    rendered.push((
        "remote-cluster".into(),
        render(&deploy_dir().join("remote-cluster")),
    ));
    for (name, yaml) in rendered {
        let docs = documents(&yaml);
        let mut configmap_rules = 0;
        let mut lease_rules = 0;
        for doc in docs
            .iter()
            .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        {
            for rule in doc["rules"].as_array().unwrap() {
                let resources = rule["resources"].as_array().unwrap();
                assert!(
                    !resources.iter().any(|r| r == "secrets"),
                    "{name}: {} reads Secrets",
                    doc["metadata"]["name"]
                );
                if resources.iter().any(|r| r == "leases") {
                    lease_rules += 1;
                    assert_eq!(doc["kind"], "Role", "{name}: leases only in one namespace");
                    let verbs = &rule["verbs"];
                    let named = [
                        serde_json::json!(["istio-vault-ca-trust-distribution"]),
                        serde_json::json!(["istio-vault-ca-istiod-certificate"]),
                    ];
                    assert!(
                        *verbs == serde_json::json!(["create"])
                            || named.contains(&rule["resourceNames"]),
                        "{name}: lease rule {verbs} does not name its Lease"
                    );
                }
                if !resources.iter().any(|r| r == "configmaps") {
                    continue;
                }
                configmap_rules += 1;
                let verbs: Vec<&str> = rule["verbs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap())
                    .collect();
                if verbs == ["create"] {
                    continue;
                }
                assert!(
                    !verbs.contains(&"create"),
                    "{name}: create with other verbs"
                );
                assert_eq!(
                    rule["resourceNames"],
                    serde_json::json!(["istio-ca-root-cert", "istio-ca-crl"]),
                    "{name}: ConfigMap rule {verbs:?} does not name its resource"
                );
            }
        }
        assert!(
            configmap_rules >= 2,
            "{name}: trust distribution rules missing"
        );
        if name != "remote-cluster" {
            assert!(lease_rules >= 2, "{name}: trust distribution's Lease rules");
        }
        for policy in docs.iter().filter(|d| d["kind"] == "NetworkPolicy") {
            for ingress in policy["spec"]["ingress"].as_array().unwrap() {
                let admin = ingress["ports"]
                    .as_array()
                    .is_some_and(|ports| ports.iter().any(|p| p["port"] == 15014));
                assert!(
                    !admin || ingress["from"].as_array().is_some_and(|f| !f.is_empty()),
                    "{name}: the admin port is open to every pod"
                );
            }
        }
    }
}

#[test]
fn shipped_configs_load() {
    let mut configs = vec![deploy_dir().join("base/config.toml")];
    configs.extend(
        overlays()
            .into_iter()
            .map(|d| d.join("config.toml"))
            .filter(|p| p.exists()),
    );
    assert!(configs.len() >= 2);
    for path in configs {
        // As an operator checks one before applying it: off the cluster, where the mounted
        // files are not.
        let out = Command::new(env!("CARGO_BIN_EXE_istio-vault-ca"))
            .args(["check-config", "--offline", "--config"])
            .arg(&path)
            .env_remove("IVCA_CONFIG")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.ends_with("config OK\n"),
            "{}:\n{stdout}{}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_configures_kubernetes_auth() {
    let bao = support::OpenBao::start().await;
    let first = bao.setup(&[]);
    // Any PEM CA stands in for the API server's (Vault does not contact it at config time).
    let ca = first.join("tls/root-cert.pem");
    bao.setup(&[
        "--kubernetes-auth",
        "--kubernetes-host",
        "https://10.96.0.1:443",
        "--kubernetes-ca-file",
        ca.to_str().unwrap(),
    ]);
    let role = bao
        .api(
            "GET",
            "auth/kubernetes/role/istio-vault-ca",
            serde_json::Value::Null,
        )
        .await;
    let data = &role["data"];
    assert_eq!(
        data["bound_service_account_names"],
        serde_json::json!(["istio-vault-ca"])
    );
    assert_eq!(
        data["bound_service_account_namespaces"],
        serde_json::json!(["istio-system"])
    );
    assert_eq!(
        data["token_policies"],
        serde_json::json!(["istio-vault-ca"])
    );
    assert_eq!(
        data["audience"], "vault",
        "the login token must be minted for Vault"
    );
    let config = bao
        .api("GET", "auth/kubernetes/config", serde_json::Value::Null)
        .await;
    assert_eq!(config["data"]["kubernetes_host"], "https://10.96.0.1:443");

    // A second run with other options does not replace an existing auth/kubernetes/config
    // (it may belong to another team); the admin token comes from a file, not argv.
    let token_file = first.join("admin-token");
    std::fs::write(&token_file, &bao.root_token).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault/setup.py");
    let status = Command::new("python3")
        .arg(script)
        .args(["--addr", &bao.addr, "--admin-token-file"])
        .arg(&token_file)
        .args([
            "--kubernetes-auth",
            "--kubernetes-host",
            "https://elsewhere.example:6443",
        ])
        .env_remove("BAO_TOKEN")
        .env_remove("VAULT_TOKEN")
        .status()
        .unwrap();
    assert!(status.success());
    let config = bao
        .api("GET", "auth/kubernetes/config", serde_json::Value::Null)
        .await;
    assert_eq!(config["data"]["kubernetes_host"], "https://10.96.0.1:443");
}

/// The serving role `setup.py` writes signs exactly the configured names: not a subdomain,
/// a wildcard, another IP, or `localhost` unless listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_role_allows_only_the_configured_names() {
    let bao = support::OpenBao::start().await;
    bao.setup(&["--serving-names", "ca.example.svc,10.1.2.3"]);
    let issue = |body: serde_json::Value| {
        let bao = &bao;
        async move {
            bao.client()
                .post(format!(
                    "{}/v1/{}/issue/istio-vault-ca-serving",
                    bao.addr,
                    support::MOUNT
                ))
                .header("X-Vault-Token", &bao.root_token)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    use serde_json::json;
    assert_eq!(
        issue(json!({"common_name": "ca.example.svc", "ip_sans": "10.1.2.3"})).await,
        200
    );
    for refused in [
        json!({"common_name": "evil.example"}),
        json!({"common_name": "x.ca.example.svc"}),
        json!({"common_name": "*.example.svc"}),
        json!({"common_name": "localhost"}),
        json!({"common_name": "ca.example.svc", "ip_sans": "10.1.2.4"}),
    ] {
        assert_eq!(issue(refused.clone()).await, 400, "{refused}");
    }
}

/// The alerting rules (component `alerts`, rendered by the single-cluster-monitoring overlay) are
/// well-formed Prometheus Operator rules, and every metric they query is one the signer
/// exports (docs/metrics.md, which a unit test keeps equal to src/metrics.rs): a renamed
/// metric cannot leave an alert that silently never fires.
#[test]
fn alert_rules_query_exported_metrics() {
    let rendered = render(&deploy_dir().join("overlays/single-cluster-monitoring"));
    let rules: Vec<serde_json::Value> = documents(&rendered)
        .into_iter()
        .filter(|d| d["kind"] == "PrometheusRule")
        .flat_map(|d| {
            d["spec"]["groups"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap().clone())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(rules.len() >= 10, "{} rules", rules.len());

    let mut names = std::collections::HashSet::new();
    for rule in &rules {
        let alert = rule["alert"].as_str().expect("every rule is an alert");
        assert!(names.insert(alert.to_owned()), "{alert} twice");
        assert!(
            matches!(
                rule["labels"]["severity"].as_str(),
                Some("warning" | "critical")
            ),
            "{alert}: severity"
        );
        for key in ["summary", "description"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{alert}: {key}"
            );
        }
        check_query(alert, rule["expr"].as_str().unwrap());
    }
}

/// A PromQL expression with balanced brackets that queries at least one signer metric, each of
/// them exported (a row of docs/metrics.md, which a unit test keeps equal to src/metrics.rs).
fn check_query(what: &str, expr: &str) {
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/metrics.md"))
            .unwrap();
    let documented = |name: &str| docs.contains(&format!("| `{name}` |"));
    let (mut open, mut metrics) = (0i32, 0);
    for c in expr.chars() {
        open += match c {
            '(' | '{' | '[' => 1,
            ')' | '}' | ']' => -1,
            _ => 0,
        };
        assert!(open >= 0, "{what}: unbalanced {expr}");
    }
    assert_eq!(open, 0, "{what}: unbalanced {expr}");
    for (at, _) in expr.match_indices("istio_vault_ca_") {
        let name: String = expr[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| documented(b)))
            .unwrap_or(&name);
        assert!(
            documented(base),
            "{what} queries {name}, which is not exported"
        );
        metrics += 1;
    }
    assert!(metrics > 0, "{what} queries no signer metric");
}

/// The Grafana dashboard (deploy/grafana/istio-vault-ca.json): valid JSON, unique panel ids,
/// every panel titled and on the Prometheus datasource variable, every query balanced and
/// naming only exported metrics; the areas the issue asks for are all there.
#[test]
fn grafana_dashboard_queries_exported_metrics() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/istio-vault-ca.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 12, "{} panels", panels.len());
    let mut ids = std::collections::HashSet::new();
    let mut queried = std::collections::HashSet::new();
    for panel in panels {
        let title = panel["title"]
            .as_str()
            .filter(|t| !t.is_empty())
            .expect("titled");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id twice"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            check_query(title, expr);
            queried.extend(expr.match_indices("istio_vault_ca_").map(|(at, _)| {
                expr[at..]
                    .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                    .next()
                    .unwrap()
                    .to_owned()
            }));
        }
    }
    for wanted in [
        "istio_vault_ca_requests_total",
        "istio_vault_ca_refusals_total",
        "istio_vault_ca_request_duration_seconds_bucket",
        "istio_vault_ca_vault_request_duration_seconds_bucket",
        "istio_vault_ca_vault_errors_total",
        "istio_vault_ca_vault_failing_fast",
        "istio_vault_ca_serving_certificate_expiry_timestamp_seconds",
        "istio_vault_ca_trust_bundle_expiry_timestamp_seconds",
        "istio_vault_ca_trust_distribution_namespaces",
    ] {
        assert!(queried.contains(wanted), "the dashboard shows no {wanted}");
    }
}

/// The opt-in cluster-trust-bundle component grants exactly one ClusterTrustBundle by name
/// (create unnamed, as the API requires), `attest` on the one signer Istio's bundles name, and
/// nothing else; its YAML validates.
#[test]
fn cluster_trust_bundle_component_grants_one_object() {
    let dir = deploy_dir().join("components/cluster-trust-bundle");
    let yaml = std::fs::read_to_string(dir.join("rbac.yaml")).unwrap();
    validate("cluster-trust-bundle", &yaml);
    let docs = documents(&yaml);
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0]["resourceNames"],
        serde_json::json!([istio_vault_ca::cluster_trust_bundle::object_name(
            "root-cert"
        )])
    );
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "list", "watch", "patch"])
    );
    assert_eq!(rules[1]["verbs"], serde_json::json!(["create"]));
    assert!(rules[1].get("resourceNames").is_none());
    assert_eq!(rules[2]["resources"], serde_json::json!(["signers"]));
    assert_eq!(
        rules[2]["resourceNames"],
        serde_json::json!([istio_vault_ca::cluster_trust_bundle::SIGNER_NAME])
    );
    assert_eq!(rules[2]["verbs"], serde_json::json!(["attest"]));
    for r in rules {
        assert_eq!(r["apiGroups"], serde_json::json!(["certificates.k8s.io"]));
    }
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .unwrap();
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("kind: Component") && kustomization.contains("rbac.yaml"));
}

/// The opt-in istiod-certificate component grants exactly one Secret, by name, in istiod's
/// namespace, to the signer's service account.
#[test]
fn istiod_certificate_component_grants_one_secret() {
    let dir = deploy_dir().join("components/istiod-certificate");
    let docs = documents(&std::fs::read_to_string(dir.join("rbac.yaml")).unwrap());
    let role = docs.iter().find(|d| d["kind"] == "Role").expect("a Role");
    assert_eq!(role["metadata"]["namespace"], "istio-system");
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(
        rules.len(),
        3,
        "the Secret, and its Lease (by name; create)"
    );
    assert_eq!(rules[0]["resources"], serde_json::json!(["secrets"]));
    assert_eq!(
        rules[1]["resourceNames"],
        serde_json::json!(["istio-vault-ca-istiod-certificate"])
    );
    assert_eq!(rules[2]["verbs"], serde_json::json!(["create"]));
    assert!(
        rules[1..]
            .iter()
            .all(|r| r["resources"] == serde_json::json!(["leases"]))
    );
    assert_eq!(rules[0]["resourceNames"], serde_json::json!(["istiod-tls"]));
    for verb in rules[0]["verbs"].as_array().unwrap() {
        assert!(
            matches!(verb.as_str(), Some("get" | "patch" | "create")),
            "{verb}"
        );
    }
    assert!(docs.iter().all(|d| d["kind"] != "ClusterRole"));
    let binding = docs.iter().find(|d| d["kind"] == "RoleBinding").unwrap();
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": "istio-vault-ca", "namespace": "istio-system"}])
    );
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("kind: Component") && kustomization.contains("rbac.yaml"));
}

/// docs/install.md step 1's command, run as written in `dir` against `bao`: only Vault's
/// address, this checkout's `setup.py` and the admin token substituted, plus the guide's own
/// addition for a Vault outside the cluster (`--kubernetes-host <api_server>` and
/// `--kubernetes-ca-file`, here a generated CA), and `--self-issued-serving` or not.
/// The `n`th shell block of docs/install.md's step 1.
fn guide_step1_command(n: usize) -> String {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/install.md"))
            .unwrap();
    let step = &guide[guide.find("1. **Prepare Vault**").unwrap()..];
    let step = &step[..step.find("2. **Trust roots").unwrap()];
    let block = step
        .split("```sh\n")
        .nth(n + 1)
        .expect("the step's shell block");
    let command = &block[..block.find("```").unwrap()];
    assert!(command.contains("deploy/vault/setup.py"), "{command}");
    command.to_owned()
}

/// Runs `command` (a block of step 1) in `dir` with the admin token in `$ADMIN_TOKEN`, after
/// `replace` and the guide's own addition for a Vault outside the cluster
/// (`--kubernetes-host`/`--kubernetes-ca-file`); whether it succeeded.
fn run_guide_command(
    command: &str,
    replace: &[(&str, &str)],
    bao: &support::OpenBao,
    dir: &Path,
    api_server: &str,
    self_issued: bool,
) -> bool {
    let ca = dir.join("api-server-ca.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&ca, params.self_signed(&key).unwrap().pem()).unwrap();
    let setup_py = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault/setup.py");
    let mut script = command
        .replace("deploy/vault/setup.py", setup_py.to_str().unwrap())
        .replace(
            "--kubernetes-auth",
            &format!(
                "--kubernetes-auth --kubernetes-host {api_server} --kubernetes-ca-file {}",
                ca.display()
            ),
        )
        .replace(
            "[--self-issued-serving]",
            if self_issued {
                "--self-issued-serving"
            } else {
                ""
            },
        );
    for (from, to) in replace {
        assert!(
            script.contains(from),
            "{from:?} is not in the guide's command:\n{script}"
        );
        script = script.replace(from, to);
    }
    Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir)
        .env("ADMIN_TOKEN", &bao.root_token)
        .env_remove("VAULT_TLS_SERVER_NAME")
        .status()
        .unwrap()
        .success()
}

fn run_guide_step1(bao: &support::OpenBao, dir: &Path, api_server: &str, self_issued: bool) {
    let command = guide_step1_command(0);
    let replace = [("https://vault.vault.svc:8200", bao.addr.as_str())];
    assert!(
        run_guide_command(&command, &replace, bao, dir, api_server, self_issued),
        "the guide's step 1 failed:\n{command}"
    );
}

/// docs/install.md step 1 from a workstation, as written: Vault listens over TLS with a
/// certificate for its in-cluster name only (`vault.vault.svc`, from a test CA), on loopback;
/// the one substitution is the port-forward itself (`kubectl port-forward` is a loopback relay
/// to that listener: the test uses the listener's port). The command succeeds, and without
/// `--tls-server-name` it fails (the certificate does not name 127.0.0.1), so the flag the
/// guide gives is what makes it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_guide_vault_step_works_from_a_workstation() {
    let (bao, tls) = support::OpenBao::start_named_tls(&["vault.vault.svc"]).await;
    let command = guide_step1_command(1);
    let port = format!("127.0.0.1:{}", tls.port);
    let ca = tls.ca_file.to_str().unwrap();
    let forward = "kubectl -n vault port-forward svc/vault 8200:8200 &\n";
    let replace = [
        (forward, ""),
        ("kill %1\n", ""),
        ("127.0.0.1:8200", port.as_str()),
        ("vault-ca.pem", ca),
    ];
    let dir = tempfile::tempdir().unwrap();
    assert!(
        run_guide_command(
            &command,
            &replace,
            &bao,
            dir.path(),
            "https://10.96.0.1:443",
            false
        ),
        "the guide's workstation command failed:\n{command}"
    );
    assert!(
        dir.path().join("tls/tls.crt").exists(),
        "--serving-cert-dir ./tls"
    );

    let without_name = command.replace("--tls-server-name vault.vault.svc", "");
    let dir = tempfile::tempdir().unwrap();
    assert!(
        !run_guide_command(
            &without_name,
            &replace,
            &bao,
            dir.path(),
            "https://10.96.0.1:443",
            false
        ),
        "without --tls-server-name the certificate must not be accepted for 127.0.0.1"
    );
}

/// docs/install.md step 1, run as written (only Vault's address and the admin token
/// substituted, plus the guide's own addition for a Vault outside the cluster:
/// `--kubernetes-host`/`--kubernetes-ca-file`) against a real OpenBao, with and without
/// `--self-issued-serving`: it succeeds, and the serving role it creates signs exactly the names the self-issued overlay
/// asks for (the overlay would otherwise crash-loop on a name the role refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_guide_vault_step_works_as_written() {
    let overlay: toml::Table =
        std::fs::read_to_string(deploy_dir().join("overlays/self-issued/config.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let names: Vec<String> = overlay["server"]["self_issued"]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let serving_role = overlay["server"]["self_issued"]["role"].as_str().unwrap();

    for self_issued in [false, true] {
        let bao = support::OpenBao::start().await;
        let dir = tempfile::tempdir().unwrap();
        // Vault does not contact the API server at config time.
        run_guide_step1(&bao, dir.path(), "https://10.96.0.1:443", self_issued);
        assert!(
            dir.path().join("tls/tls.crt").exists(),
            "--serving-cert-dir ./tls"
        );
        let role = bao
            .api(
                "GET",
                &format!("{}/roles/{serving_role}", support::MOUNT),
                serde_json::Value::Null,
            )
            .await;
        let mut allowed: Vec<String> = role["data"]["allowed_domains"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_str().unwrap().to_owned())
            .collect();
        allowed.sort();
        let mut wanted = names.clone();
        wanted.sort();
        assert_eq!(
            allowed, wanted,
            "serving role vs overlays/self-issued names"
        );
        // With --self-issued-serving the signer's policy may sign with that role.
        let policy = bao
            .api(
                "GET",
                "sys/policies/acl/istio-vault-ca",
                serde_json::Value::Null,
            )
            .await;
        let text = policy["data"]["policy"].as_str().unwrap();
        assert_eq!(
            text.contains(&format!("{}/sign/{serving_role}", support::MOUNT)),
            self_issued,
            "{text}"
        );
    }
}

/// The default overlays apply on a cluster without the Prometheus Operator: its objects come
/// only with overlays/single-cluster-monitoring.
#[test]
fn prometheus_operator_objects_are_opt_in() {
    for overlay in overlays() {
        let name = overlay.file_name().unwrap().to_string_lossy().to_string();
        let kinds: Vec<String> = documents(&render(&overlay))
            .iter()
            .map(|d| d["kind"].as_str().unwrap().to_owned())
            .collect();
        let operator = kinds
            .iter()
            .any(|k| k == "ServiceMonitor" || k == "PrometheusRule");
        assert_eq!(
            operator,
            name == "single-cluster-monitoring",
            "{name}: {kinds:?}"
        );
    }
}

/// Every overlay's Deployment mounts only volumes it defines (the API server rejects a mount
/// of a missing volume), and the self-issued overlay needs no serving-certificate Secret.
#[test]
fn deployments_mount_only_defined_volumes() {
    for overlay in overlays() {
        let name = overlay.file_name().unwrap().to_string_lossy().to_string();
        for d in documents(&render(&overlay))
            .iter()
            .filter(|d| d["kind"] == "Deployment")
        {
            let spec = &d["spec"]["template"]["spec"];
            let volumes: Vec<&str> = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["name"].as_str().unwrap())
                .collect();
            for container in spec["containers"].as_array().unwrap() {
                for mount in container["volumeMounts"].as_array().unwrap() {
                    let volume = mount["name"].as_str().unwrap();
                    assert!(
                        volumes.contains(&volume),
                        "{name}: mount of {volume}, which is not a volume ({volumes:?})"
                    );
                }
            }
            assert!(volumes.contains(&"config"), "{name}: {volumes:?}");
            let secret_volume = spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "istio-vault-ca-tls");
            assert_eq!(secret_volume, name != "self-issued", "{name}: {volumes:?}");
        }
    }
}

/// The runbook end to end: after docs/install.md step 1 (run as written, Vault's Kubernetes
/// auth pointed at a loopback API server), the signer binary starts from each shipped config
/// (`base/config.toml`, and the self-issued overlay's, which obtains its serving certificate
/// from Vault) and serves. Only what a cluster provides is substituted: listen
/// addresses, Vault's address, the mounted files' paths (serving certificate from the guide's
/// `./tls`, the API server's CA, the pod's token, the token projected for Vault) and the
/// API server's JWKS address. The signer logs in to Vault with Kubernetes auth (Vault asks
/// the API server's TokenReview about the projected token), issues a workload certificate,
/// and writes `istio-ca-root-cert` (trust distribution, on in the shipped config).
///
/// Real: OpenBao, setup.py, the signer binary, TLS. The API server (TokenReview, JWKS,
/// namespaces, ConfigMaps, Leases) is the loopback stand-in of `support::kube_api`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signer_serves_from_the_shipped_configs_after_the_guide() {
    serves_from_shipped_config("base/config.toml", false).await;
    // The self-issued overlay: the signer obtains its serving certificate from Vault itself.
    serves_from_shipped_config("overlays/self-issued/config.toml", true).await;
}

/// [`signer_serves_from_the_shipped_configs_after_the_guide`] for one shipped config.
async fn serves_from_shipped_config(shipped: &str, self_issued: bool) {
    use istio_vault_ca::client::Shape;
    use istio_vault_ca::dev::{DEFAULT_ISSUER, DevIssuer, TokenSpec};
    let api = support::kube_api::FakeApi::new(&[("default", false), ("istio-system", false)]);
    let api_server = api.start().await;
    let bao = support::OpenBao::start().await;
    let dir = tempfile::tempdir().unwrap();
    run_guide_step1(&bao, dir.path(), &api_server, self_issued);

    // What the cluster would give the pod: its API-server token, one projected for Vault, the
    // API server's JWKS, and a kubeconfig (in-cluster config stands in for it).
    let cluster = DevIssuer::generate(DEFAULT_ISSUER).unwrap();
    *api.jwks.lock().unwrap() = Some(cluster.jwks_json());
    let mut for_vault = TokenSpec::new("istio-system", "istio-vault-ca");
    for_vault.audiences = vec!["vault".into()];
    let vault_jwt = cluster.token(&for_vault).unwrap();
    api.tokens.lock().unwrap().insert(
        vault_jwt.clone(),
        (
            "system:serviceaccount:istio-system:istio-vault-ca".into(),
            vec!["vault".into()],
        ),
    );
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let vault_token = file("vault-token.jwt", &vault_jwt);
    let pod_token = file(
        "pod-token.jwt",
        &cluster
            .token(&TokenSpec::new("istio-system", "istio-vault-ca"))
            .unwrap(),
    );
    let api_ca = dir.path().join("api-server-ca.pem");
    let kubeconfig = support::kubeconfig(dir.path(), "kubeconfig", &api_server);

    let (port, admin) = (support::process::free_port(), support::process::free_port());
    let shipped_text = std::fs::read_to_string(deploy_dir().join(shipped)).unwrap();
    let substitutions = [
        ("0.0.0.0:15012", format!("127.0.0.1:{port}")),
        ("0.0.0.0:15014", format!("127.0.0.1:{admin}")),
        ("https://vault.vault.svc:8200", bao.addr.clone()),
        (
            "/etc/istio-vault-ca/tls",
            dir.path().join("tls").display().to_string(),
        ),
        (
            "https://kubernetes.default.svc/openid/v1/jwks",
            format!("{api_server}/openid/v1/jwks"),
        ),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            api_ca.display().to_string(),
        ),
        (
            "/var/run/secrets/kubernetes.io/serviceaccount/token",
            pod_token.display().to_string(),
        ),
        (
            "/var/run/secrets/tokens/vault/token",
            vault_token.display().to_string(),
        ),
    ];
    let mut config = shipped_text.clone();
    for (from, to) in &substitutions {
        config = config.replace(from, to);
    }
    for cluster_only in [
        "0.0.0.0",
        "/var/run/",
        "/etc/istio-vault-ca",
        "vault.vault.svc",
    ] {
        let line = config
            .lines()
            .find(|l| l.contains(cluster_only) && !l.trim_start().starts_with('#'));
        assert!(line.is_none(), "{shipped}: unsubstituted {line:?}");
    }
    let config_path = file("config.toml", &config);

    let ca_pem = std::fs::read(dir.path().join("tls/root-cert.pem")).unwrap();
    let signer = support::process::SignerProcess::start_with_config(
        &config_path,
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::net::SocketAddr::from(([127, 0, 0, 1], admin)),
        ca_pem.clone(),
        cluster,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAMESPACE", "istio-system"),
        ],
    )
    .await;

    // A workload's request, as pilot-agent sends it (the guide names the serving certificate
    // for the Service; the client checks it for that name).
    let id = support::id("default", "demo");
    let kc = istio_vault_ca::client::generate_csr(Shape::PilotAgent, &id).unwrap();
    let opts = istio_vault_ca::client::CallOptions {
        token: Some(
            signer
                .issuer
                .token(&TokenSpec::new("default", "demo"))
                .unwrap(),
        ),
        cluster_id: Some("Kubernetes".into()),
        ttl_seconds: 3600,
        impersonate: None,
        cert_signer: None,
    };
    let req =
        istio_vault_ca::client::build_request(Shape::PilotAgent, &kc.csr_pem, &id, &opts).unwrap();
    let mut client = istio_vault_ca::client::connect(
        &signer.addr.to_string(),
        &ca_pem,
        Some("istio-vault-ca.istio-system.svc"),
    )
    .await
    .unwrap();
    let chain = client
        .create_certificate(req)
        .await
        .unwrap_or_else(|s| panic!("{s:?}\n{}", signer.log()))
        .into_inner()
        .cert_chain;
    let summary = istio_vault_ca::client::inspect_chain(&chain).unwrap();
    assert_eq!(summary.identity, id.to_string());
    let logins = std::fs::read_to_string(bao.audit_log())
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("\"type\":\"response\"") && l.contains("\"path\":\"auth/kubernetes/login\"")
        })
        .count();
    assert!(logins >= 1, "the signer logged in with Kubernetes auth");
    support::eventually("istio-ca-root-cert written", async || {
        api.root("default").as_deref() == chain.last().map(String::as_str)
    })
    .await;
}

/// Copies `from` into `to` recursively (the deploy tree, to edit a copy).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// docs/install.md step 4 as a person follows it: for every overlay, the guide names the
/// `config.toml` to edit (the base one, or the overlay's own that replaces it). In a copy of
/// `deploy/kubernetes`, a marker line is added to that file and the overlay rendered: the
/// marker is in what it deploys. The marker added to the other file is not (an edit to the
/// base file is lost under an overlay with its own), so the guide's split is the real one.
#[test]
fn install_guide_names_the_config_each_overlay_deploys() {
    let guide =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/install.md"))
            .unwrap();
    let step = &guide[guide.find("4. **Deploy the signer**").unwrap()..];
    let uses_base = &step[..step
        .find("use `deploy/kubernetes/base/config.toml`")
        .unwrap()];
    let own = &step[uses_base.len()..step.find("ship their own `config.toml`").unwrap()];
    for overlay in overlays() {
        let name = overlay.file_name().unwrap().to_str().unwrap().to_owned();
        let quoted = format!("`{name}`");
        let guide_says_own = match (uses_base.contains(&quoted), own.contains(&quoted)) {
            (true, false) => false,
            (false, true) => true,
            other => panic!("install.md step 4 must name {quoted} once: {other:?}"),
        };
        let copy = tempfile::tempdir().unwrap();
        copy_tree(&deploy_dir(), copy.path());
        let base = copy.path().join("base/config.toml");
        let own_file = copy.path().join(format!("overlays/{name}/config.toml"));
        let (edited, other) = if guide_says_own {
            (own_file, Some(base))
        } else {
            (base, own_file.exists().then_some(own_file))
        };
        let mark = |file: &Path, marker: &str| {
            let mut text = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("{name}: the guide's file {}: {e}", file.display()));
            text.push_str(&format!("\n# {marker}\n"));
            std::fs::write(file, text).unwrap();
        };
        mark(&edited, "edited-where-the-guide-says");
        if let Some(other) = &other {
            mark(other, "edited-elsewhere");
        }
        let yaml = render(&copy.path().join(format!("overlays/{name}")));
        assert!(
            yaml.contains("edited-where-the-guide-says"),
            "{name}: the file install.md names is not the one deployed"
        );
        assert!(
            !yaml.contains("edited-elsewhere"),
            "{name}: the other config.toml is deployed too"
        );
    }
}
