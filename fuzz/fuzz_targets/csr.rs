//! Fuzz target `csr`: body and oracle in `istio_vault_ca::fuzz::csr`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::csr(data));
