//! What `check-config` verifies beyond the configuration's values: the files it names.

use crate::config::Config;
use crate::tls;

/// What `check-config` found beyond the configuration's values.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Preflight {
    /// What would stop `serve`: one line per problem.
    pub problems: Vec<String>,
    /// What could not be checked here (`--offline`: files mounted only in the pod).
    pub notes: Vec<String>,
}

/// What `check-config` verifies beyond the config itself: every file it names exists and is
/// readable, the serving certificate and key load as a pair, and so do Vault's CA bundle and
/// client certificate. `offline` (a config checked away from where it runs): a file that does
/// not exist is a note, not a problem, and the pairs are not checked while one is missing.
pub fn preflight(config: &Config, offline: bool) -> Preflight {
    let mut found = Preflight::default();
    for (key, path) in config.referenced_files() {
        match std::fs::File::open(path) {
            Ok(_) => {}
            Err(e) if offline && e.kind() == std::io::ErrorKind::NotFound => {
                found.notes.push(format!(
                    "{key}: {} is not on this machine: not checked",
                    path.display()
                ))
            }
            Err(e) => found
                .problems
                .push(format!("{key}: {}: {e}", path.display())),
        }
    }
    if !found.problems.is_empty() {
        return found;
    }
    if !found.notes.is_empty() {
        found
            .notes
            .push("certificate and key pairs: not checked (a file they need is not here)".into());
        return found;
    }
    if let (Some(cert), Some(key)) = (&config.server.cert_file, &config.server.key_file)
        && let Err(e) = tls::load_certified_key(cert, key)
    {
        found
            .problems
            .push(format!("server.cert_file / server.key_file: {e}"));
        return found;
    }
    for (name, vault) in config.vault_servers() {
        if let Err(e) = crate::vault::TlsFiles::from_config(vault).check() {
            found
                .problems
                .push(format!("{}.{e}", crate::config::vault_section(name)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn preflight_names_unreadable_files_and_mismatched_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.cert_file = Some(dir.path().join("tls.crt"));
        config.server.key_file = Some(dir.path().join("tls.key"));
        config.vault.token_file = Some(dir.path().join("vault-token"));
        let problems = preflight(&config, false).problems;
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("server.cert_file: "),
            "{problems:?}"
        );
        assert!(
            problems[2].starts_with("vault.token_file: "),
            "{problems:?}"
        );

        // Off the cluster the mounted files are missing: notes, and the pairs are not checked.
        let offline = preflight(&config, true);
        assert!(offline.problems.is_empty(), "{offline:?}");
        assert_eq!(offline.notes.len(), 4, "{offline:?}");
        assert!(
            offline.notes[0].starts_with("server.cert_file: ")
                && offline.notes[0].ends_with("is not on this machine: not checked"),
            "{offline:?}"
        );

        let ((cert, _), (_, other_key)) = (self_signed("a"), self_signed("b"));
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), other_key).unwrap();
        std::fs::write(dir.path().join("vault-token"), "t").unwrap();
        let problems = preflight(&config, false).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("key does not match"), "{problems:?}");
        // Files that are here are checked offline too.
        assert_eq!(preflight(&config, true).problems, problems);

        let (cert, key) = self_signed("a");
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        assert_eq!(preflight(&config, false), Preflight::default());

        // Vault's CA bundle and client certificate go through the same checks as at start.
        config.vault.ca_file = Some(dir.path().join("vault-ca.pem"));
        std::fs::write(dir.path().join("vault-ca.pem"), "").unwrap();
        let problems = preflight(&config, false).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("vault.ca_file "), "{problems:?}");
        std::fs::copy(dir.path().join("tls.crt"), dir.path().join("vault-ca.pem")).unwrap();
        config.vault.client_cert_file = Some(dir.path().join("tls.crt"));
        config.vault.client_key_file = Some(dir.path().join("vault-client.key"));
        std::fs::write(dir.path().join("vault-client.key"), self_signed("c").1).unwrap();
        let problems = preflight(&config, false).problems;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("key does not match"), "{problems:?}");
        std::fs::write(dir.path().join("vault-client.key"), key).unwrap();
        assert_eq!(preflight(&config, false), Preflight::default());
        let summary = config.summary();
        assert!(summary.contains("0.0.0.0:15012"), "{summary}");
        // The default JWT verification fetches the JWKS by OIDC discovery: it is a method.
        assert!(
            summary
                .contains("callers        service-account JWT (JWKS by OIDC discovery) in cluster"),
            "{summary}"
        );
        assert!(
            summary.contains("pki-istio/sign/istio-workload"),
            "{summary}"
        );
    }
}
