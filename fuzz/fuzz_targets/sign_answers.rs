//! Fuzz target `sign_answers`: body and oracle in `istio_vault_ca::fuzz::sign_answers`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| istio_vault_ca::fuzz::sign_answers(data));
