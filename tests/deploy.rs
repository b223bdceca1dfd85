//! The deployment artefacts are checked, not just shipped: every Kustomize overlay renders
//! (`kubectl kustomize`) and validates strictly against the Kubernetes schemas
//! (`kubernetes-validate`, installed by scripts/test.sh); every shipped `config.toml` loads in
//! the signer; and `setup.py --kubernetes-auth` configures Kubernetes auth on a real OpenBao.

mod support;

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

#[test]
fn every_overlay_renders_and_validates() {
    let overlays = overlays();
    assert!(
        overlays.len() >= 2,
        "single-cluster and self-issued overlays"
    );
    let out = tempfile::tempdir().unwrap();
    for dir in overlays {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let rendered = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .expect("kubectl (with kustomize) must be installed");
        assert!(
            rendered.status.success(),
            "{name}: kubectl kustomize failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let yaml = String::from_utf8(rendered.stdout).unwrap();
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
        let file = out.path().join(format!("{name}.yaml"));
        std::fs::write(&file, &yaml).unwrap();
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
        istio_vault_ca::config::Config::load(Some(&path), Vec::<(String, String)>::new())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
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
    let config = bao
        .api("GET", "auth/kubernetes/config", serde_json::Value::Null)
        .await;
    assert_eq!(config["data"]["kubernetes_host"], "https://10.96.0.1:443");
}
