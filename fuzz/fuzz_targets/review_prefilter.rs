//! Fuzz target `review_prefilter`: body and oracle in `istio_vault_ca::fuzz::review_prefilter`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::review_prefilter(data));
