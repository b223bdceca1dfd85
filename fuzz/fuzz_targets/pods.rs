//! Fuzz target `pods`: body and oracle in `istio_vault_ca::fuzz::pods`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::pods(data));
