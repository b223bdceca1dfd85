//! What a configuration refers to and does, for `check-config`: the files it names and a
//! short human summary.

use super::*;

impl Config {
    /// Every file the configuration names, with its key: what `check-config` verifies exists
    /// and is readable before the signer depends on it.
    pub fn referenced_files(&self) -> Vec<(String, &Path)> {
        let mut files: Vec<(String, Option<&PathBuf>)> = vec![
            ("server.cert_file".into(), self.server.cert_file.as_ref()),
            ("server.key_file".into(), self.server.key_file.as_ref()),
            (
                "server.client_ca_file".into(),
                self.server.client_ca_file.as_ref(),
            ),
            (
                "auth.jwt.jwks_file".into(),
                self.auth.jwt.jwks_file.as_ref(),
            ),
            ("auth.jwt.ca_file".into(), self.auth.jwt.ca_file.as_ref()),
            (
                "auth.jwt.bearer_token_file".into(),
                self.auth.jwt.bearer_token_file.as_ref(),
            ),
            (
                "auth.token_review.kubeconfig".into(),
                self.auth
                    .token_review
                    .as_ref()
                    .and_then(|t| t.kubeconfig.as_ref()),
            ),
            (
                "auth.impersonation.kubeconfig".into(),
                self.auth
                    .impersonation
                    .as_ref()
                    .and_then(|i| i.kubeconfig.as_ref()),
            ),
            ("bundle.file".into(), self.bundle.file.as_ref()),
            (
                "bundle.extra_roots_file".into(),
                self.bundle.extra_roots_file.as_ref(),
            ),
            (
                "trust_distribution.kubeconfig".into(),
                self.trust_distribution
                    .as_ref()
                    .and_then(|t| t.kubeconfig.as_ref()),
            ),
            ("tracing.ca_file".into(), self.tracing.ca_file.as_ref()),
            (
                "kubernetes.kubeconfig".into(),
                self.kubernetes.kubeconfig.as_ref(),
            ),
            (
                "istiod_certificate.kubeconfig".into(),
                self.istiod_certificate
                    .as_ref()
                    .and_then(|i| i.kubeconfig.as_ref()),
            ),
        ];
        for (i, c) in self.auth.remote_clusters.iter().enumerate() {
            let key = format!("auth.remote_clusters[{i}]");
            files.push((format!("{key}.kubeconfig"), c.kubeconfig.as_ref()));
            match &c.verifier {
                CallerVerifier::Jwt(jwt) => {
                    files.push((format!("{key}.jwt.jwks_file"), jwt.jwks_file.as_ref()));
                    files.push((format!("{key}.jwt.ca_file"), jwt.ca_file.as_ref()));
                    files.push((
                        format!("{key}.jwt.bearer_token_file"),
                        jwt.bearer_token_file.as_ref(),
                    ));
                }
                CallerVerifier::TokenReview(tr) => files.push((
                    format!("{key}.token_review.kubeconfig"),
                    tr.kubeconfig.as_ref(),
                )),
            }
        }
        for (name, v) in self.vault_servers() {
            files.extend(v.files(&vault_section(name)));
        }
        for (i, t) in self.targets.iter().enumerate() {
            files.push((format!("targets[{i}].roots_file"), t.roots_file.as_ref()));
        }
        files
            .into_iter()
            .filter_map(|(key, path)| Some((key, path?.as_path())))
            .collect()
    }

    /// A few lines saying what this configuration will do (no secrets: it holds none, only
    /// the paths of files that do).
    pub fn summary(&self) -> String {
        // The local cluster's verifier as the authenticator builds it (AuthConfig::clusters).
        let mut methods = Vec::new();
        if let Some((_, verifier)) = self.auth.clusters().first() {
            methods.push(match verifier {
                CallerVerifier::Jwt(jwt) if jwt.jwks_file.is_some() => {
                    "service-account JWT (JWKS file)"
                }
                CallerVerifier::Jwt(jwt) if jwt.jwks_url.is_some() => {
                    "service-account JWT (JWKS URL)"
                }
                CallerVerifier::Jwt(_) => "service-account JWT (JWKS by OIDC discovery)",
                CallerVerifier::TokenReview(_) => "TokenReview",
            });
        }
        if self.auth.client_certificates {
            methods.push("client certificates");
        }
        let serving = match &self.server.self_issued {
            Some(s) => format!("self-issued by Vault for {}", s.names.join(", ")),
            None => format!(
                "{}",
                self.server
                    .cert_file
                    .as_deref()
                    .unwrap_or(Path::new("-"))
                    .display()
            ),
        };
        let mut lines = vec![
            format!("trust domain   {}", self.trust_domain.as_str()),
            format!(
                "listen         {} (serving certificate: {serving})",
                self.server.listen
            ),
            format!(
                "callers        {} in cluster {:?}{}{}",
                methods.join(", "),
                self.auth.cluster_id,
                match self.auth.remote_clusters.len() {
                    0 => String::new(),
                    n => format!(" and {n} remote cluster(s)"),
                },
                if self.auth.impersonation.is_some() {
                    "; node proxies may impersonate workloads on their node"
                } else {
                    ""
                }
            ),
            format!(
                "vault          {} ({} login), default target {}/sign/{}{}",
                self.vault.addr,
                self.vault.auth.login.method().as_str(),
                self.vault.mount,
                self.vault.role,
                if self.vault.delegated.is_some() {
                    ", delegated mode"
                } else {
                    ""
                }
            ),
            format!(
                "limits         {} calls at once, a call waits up to {} for one; {}/min per identity (burst {}), {}/min per workload (burst {}), {}/min per node (burst {}){}",
                self.server.max_in_flight,
                humantime::format_duration(self.server.queue_timeout),
                self.rate_limits.per_identity.per_minute,
                self.rate_limits.per_identity.burst,
                self.rate_limits.per_workload.per_minute,
                self.rate_limits.per_workload.burst,
                self.rate_limits.per_node.per_minute,
                self.rate_limits.per_node.burst,
                self.vault
                    .max_requests_per_second
                    .map_or(String::new(), |n| format!("; Vault at most {n}/s"))
            ),
            format!(
                "lifetime       default {}, max {}",
                humantime::format_duration(self.ttl.default),
                humantime::format_duration(self.ttl.max)
            ),
        ];
        for (name, v) in &self.vaults {
            lines.push(format!(
                "vaults.{name:<8} {} ({} login)",
                v.addr,
                v.auth.login.method().as_str(),
            ));
        }
        if !self.targets.is_empty() || !self.routes.is_empty() {
            lines.push(format!(
                "routing        {} more target(s), {} route(s)",
                self.targets.len(),
                self.routes.len()
            ));
        }
        if self.trust_distribution.is_some() {
            lines.push("trust dist.    istio-ca-root-cert kept current".into());
        }
        if let Some(admin) = self.admin.listen {
            lines.push(format!(
                "admin          {admin} (/metrics, /healthz, /readyz)"
            ));
        }
        lines.join("\n")
    }
}
