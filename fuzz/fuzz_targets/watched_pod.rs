//! Fuzz target `watched_pod`: body and oracle in `istio_vault_ca::fuzz::watched_pod`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::watched_pod(data));
