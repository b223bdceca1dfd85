//! The bodies of the fuzz targets in `fuzz/` and their oracles: each feeds hostile bytes to one
//! parser or decision of the signer and checks more than "no panic". The libFuzzer targets
//! call these; the ordinary test run replays every seed corpus through them too
//! (`tests/fuzz_corpus.rs`), so a crash the fuzzer found stays fixed. One file per input
//! kind: `csr` (`csr`, `csr_der`), `jwt`, `identity`, `leaf`, `pods` (`pods`,
//! `watched_pod`), `review` (`review_prefilter`), `routes`, `sign_answers`.

mod csr;
mod identity;
mod jwt;
mod leaf;
mod pods;
mod review;
mod routes;
mod sign_answers;

pub use csr::{csr, csr_der};
pub use identity::identity;
pub use jwt::jwt;
pub use leaf::{leaf, leaf_accepted};
pub use pods::{pods, pseudo_random, watched_pod};
pub use review::review_prefilter;
pub use routes::routes;
pub use sign_answers::{sign_answers, sign_answers_accepted, sign_answers_genuine};

use crate::identity::TrustDomain;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").expect("valid trust domain")
}
