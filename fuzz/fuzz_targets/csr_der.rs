//! Fuzz target `csr_der`: body and oracle in `istio_vault_ca::fuzz::csr_der`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::csr_der(data));
