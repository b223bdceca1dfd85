//! Fuzz target `jwt`: body and oracle in `istio_vault_ca::fuzz::jwt`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::jwt(data));
