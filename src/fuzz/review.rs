//! Target `review_prefilter`: TokenReview's pre-filter against an independent decoder.

/// TokenReview's pre-filter on a token as sent. Whatever passes is checked independently: at
/// most `MAX_REVIEW_TOKEN_BYTES`, three dot-separated parts with a non-empty signature, a
/// header whose `alg` is a public-key one, claims naming the configured issuer and an `exp`
/// not long past.
pub fn review_prefilter(data: &[u8]) {
    use base64::Engine;
    const NOW: u64 = 1_800_000_000;
    let issuers = ["https://kubernetes.default.svc.cluster.local".to_owned()];
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if crate::authn::review_prefilter(token, &issuers, NOW).is_some() {
        return;
    }
    assert!(token.len() <= crate::authn::MAX_REVIEW_TOKEN_BYTES);
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "passed with {} parts", parts.len());
    assert!(!parts[2].is_empty(), "passed unsigned");
    let json = |p: &str| -> serde_json::Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .expect("passed part decodes");
        serde_json::from_slice(&bytes).expect("passed part is JSON")
    };
    let alg = json(parts[0])["alg"]
        .as_str()
        .map(str::to_owned)
        .expect("alg");
    assert!(
        !alg.eq_ignore_ascii_case("none") && !alg.starts_with("HS"),
        "alg {alg}"
    );
    let claims = json(parts[1]);
    assert_eq!(claims["iss"].as_str(), Some(issuers[0].as_str()));
    let exp = claims["exp"]
        .as_u64()
        .expect("passed without a numeric exp");
    assert!(exp + 60 >= NOW, "passed expired");
}
