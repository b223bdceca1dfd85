//! `istio-vault-ca check-config` as an operator runs it: the real binary on broken config files
//! written by the test, each problem asserted with its exact `file:line:column`, the order of
//! several problems (the file's, not the alphabet's), `--offline` for mounted files that are
//! not on this machine, and `--help`. Nothing else is started (no Vault, no cluster).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The serving certificate's keys, which every config needs; they point nowhere, so these
/// configs are checked with `--offline` unless a case is about files.
const SERVING: &str =
    "[server]\ncert_file = \"/nonexistent/tls.crt\"\nkey_file = \"/nonexistent/tls.key\"\n";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_istio-vault-ca"));
    cmd.arg("check-config").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("IVCA_") || name == "VAULT_TOKEN" || name == "BAO_TOKEN" {
            cmd.env_remove(name);
        }
    }
    cmd.envs(env.iter().copied());
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run istio-vault-ca");
    Run {
        code: status.code().expect("exited"),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// check-config --offline on `text`: exit code 1 and exactly these problem lines (the file's
/// path in front of each that has a position), then the count.
fn assert_problems(text: &str, env: &[(&str, &str)], expected: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), text);
    let file = path.to_str().unwrap();
    let out = run(&["--offline", "--config", file], env);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let lines: Vec<String> = expected
        .iter()
        .map(|l| {
            // `line:column: …` is in the file; anything else (a variable's) names no file.
            if l.starts_with(|c: char| c.is_ascii_digit()) {
                format!("{file}:{l}")
            } else {
                (*l).to_owned()
            }
        })
        .chain([format!(
            "error: {} problem{} in the configuration",
            expected.len(),
            if expected.len() == 1 { "" } else { "s" }
        )])
        .collect();
    assert_eq!(
        out.stderr.lines().collect::<Vec<_>>(),
        lines,
        "config:\n{text}"
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[test]
fn a_typod_key_is_placed_and_the_intended_key_named() {
    assert_problems(
        &format!("{SERVING}\n[server.limits]\nmax_conections = 100\n"),
        &[],
        &[
            "6:1: server.limits.max_conections: unknown key `max_conections`; did you mean `max_connections`?",
        ],
    );
    // Far from any key: the keys the section takes are listed instead.
    assert_problems(
        &format!("{SERVING}[log]\ncolour = \"red\"\n"),
        &[],
        &["5:1: log.colour: unknown key `colour`; this section takes: format, level"],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_placed_at_the_value_in_words() {
    assert_problems(
        &format!("{SERVING}\n[server.limits]\nmax_connections = \"ten\"\n"),
        &[],
        &[
            "6:19: server.limits.max_connections: expected a whole number (0 or more), found the string \"ten\"",
        ],
    );
    assert_problems(
        &format!("{SERVING}[audit]\nenabled = \"yes\"\n"),
        &[],
        &["5:11: audit.enabled: expected true or false, found the string \"yes\""],
    );
}

#[test]
fn a_bad_duration_is_placed_and_explained() {
    assert_problems(
        &format!("[vault]\naddr = \"https://vault:8200\"\ntimeout = \"soon\"\n\n{SERVING}"),
        &[],
        &[
            "3:11: vault.timeout: \"soon\" is not a duration (expected number at 0); expected a duration such as \"30s\", \"5m\" or \"1h30m\", or a number of seconds",
        ],
    );
}

#[test]
fn a_bad_value_is_placed_at_the_value() {
    assert_problems(
        &format!("{SERVING}\n[vault]\naddr = \"vault:8200\"\n"),
        &[],
        &["6:8: vault.addr: \"vault:8200\": must be an http:// or https:// URL"],
    );
}

#[test]
fn every_problem_is_reported_in_file_order() {
    // vault.* comes first in the file, audit.* first in the alphabet (the order serde meets
    // them); a third in between. All three, in the file's order.
    let text = format!(
        "[vault]\ntimeout = \"soon\"\n\n{SERVING}queue_timeout = 5.5\n\n[audit]\nenabled = \"yes\"\n"
    );
    assert_problems(
        &text,
        &[],
        &[
            "2:11: vault.timeout: \"soon\" is not a duration (expected number at 0); expected a duration such as \"30s\", \"5m\" or \"1h30m\", or a number of seconds",
            "7:17: server.queue_timeout: expected a duration such as \"30s\", \"5m\" or \"1h30m\", or a number of seconds, found the number 5.5",
            "10:11: audit.enabled: expected true or false, found the string \"yes\"",
        ],
    );
    // Syntax errors: every one, each where it is.
    assert_problems(
        "[server\ncert_file = = 1\n",
        &[],
        &[
            "1:8: not valid TOML: unclosed table, expected `]`",
            "2:13: not valid TOML: extra `=`, expected nothing",
            "2:15: not valid TOML: unexpected key or value, expected newline, `#`",
        ],
    );
}

#[test]
fn a_required_key_is_reported_at_its_section() {
    assert_problems(
        &format!("{SERVING}\n[[targets]]\nname = \"team\"\nrole = \"r\"\n"),
        &[],
        &["5:1: targets[0].mount: is required here"],
    );
}

#[test]
fn a_variable_is_named_instead_of_a_position() {
    assert_problems(
        &format!("{SERVING}\n[log]\nlevel = \"info\"\n"),
        &[("IVCA_SERVER__LIMITS__MAX_QUEUED", "lots")],
        &[
            "server.limits.max_queued: expected a whole number (0 or more), found the string \"lots\" (set by IVCA_SERVER__LIMITS__MAX_QUEUED)",
        ],
    );
}

#[test]
fn missing_files_are_problems_on_the_cluster_and_notes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        &format!(
            "{SERVING}[vault]\naddr = \"https://vault:8200\"\ntoken_file = \"/nonexistent/token\"\n"
        ),
    );
    let file = path.to_str().unwrap();

    let on_cluster = run(&["--config", file], &[]);
    assert_eq!(on_cluster.code, 1, "{}", on_cluster.stderr);
    assert_eq!(
        on_cluster.stderr.lines().collect::<Vec<_>>(),
        [
            format!(
                "{file}: server.cert_file: /nonexistent/tls.crt: No such file or directory (os error 2)"
            ),
            format!(
                "{file}: server.key_file: /nonexistent/tls.key: No such file or directory (os error 2)"
            ),
            format!(
                "{file}: vault.token_file: /nonexistent/token: No such file or directory (os error 2)"
            ),
            "error: 3 problems with the files it names".to_owned(),
        ]
    );

    let offline = run(&["--offline", "--config", file], &[]);
    assert_eq!(offline.code, 0, "{}", offline.stderr);
    let notes: Vec<&str> = offline
        .stdout
        .lines()
        .filter(|l| l.starts_with("note: "))
        .collect();
    assert_eq!(
        notes,
        [
            "note: server.cert_file: /nonexistent/tls.crt is not on this machine: not checked",
            "note: server.key_file: /nonexistent/tls.key is not on this machine: not checked",
            "note: vault.token_file: /nonexistent/token is not on this machine: not checked",
            "note: certificate and key pairs: not checked (a file they need is not here)",
        ]
    );
    assert!(
        offline.stdout.ends_with("config OK\n"),
        "{}",
        offline.stdout
    );
    assert!(offline.stdout.contains("https://vault:8200 (token login)"));

    // A config file that is not there at all.
    let missing = dir.path().join("absent.toml");
    let out = run(&["--config", missing.to_str().unwrap()], &[]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.starts_with(&format!(
            "cannot read config file {}: No such file",
            missing.display()
        )),
        "{}",
        out.stderr
    );
}

#[test]
fn help_says_what_it_prints() {
    let out = run(&["--help"], &[]);
    assert_eq!(out.code, 0);
    for words in [
        "FILE:LINE:COLUMN: KEY: MESSAGE",
        "Exit status 1 on any problem",
        "config OK",
        "--offline",
        "mounted only in the pod",
    ] {
        assert!(
            out.stdout.contains(words),
            "{words:?} not in:\n{}",
            out.stdout
        );
    }
}
