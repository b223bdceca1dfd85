//! Fuzz target `routes`: body and oracle in `istio_vault_ca::fuzz::routes`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::routes(data));
