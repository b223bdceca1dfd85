//! One crypto provider: aws-lc-rs. `ring` may appear in Cargo.lock as an optional dependency
//! nobody enables, but it must never be compiled in (with both providers, rustls would need an
//! explicit default and the binary would carry two crypto stacks).

#[test]
fn ring_is_not_in_the_build_graph() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--locked",
            "--offline",
            "-i",
            "ring",
            "-e",
            "normal,build",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.trim().is_empty() && stderr.contains("nothing to print"),
        "ring is compiled in:\n{stdout}{stderr}"
    );
}
