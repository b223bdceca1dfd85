//! One crypto provider: aws-lc-rs. `ring` stays in Cargo.lock only because rustls-webpki's
//! `alloc` feature names it weakly (`ring?/alloc`, and cargo records weak optional
//! dependencies, rust-lang/cargo#10801); nothing enables it. It must never be compiled in
//! (with both providers, rustls would need an explicit default and the binary would carry two
//! crypto stacks). reqwest is built with `rustls-no-provider` so quinn does not add it again.

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
