//! Fuzz target `leaf`: body and oracle in `istio_vault_ca::fuzz::leaf`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::leaf(data));
