//! Two clusters with different token issuers, selected by the `clusterid` header, against a
//! real OpenBao over real TLS: each cluster's tokens are judged only by that cluster's keys
//! (the result cache is per cluster too), and an unknown cluster is refused by name.

use istio_vault_ca::client::{CallOptions, Shape};
use istio_vault_ca::dev::{DevIssuer, TokenSpec};
use support::{Env, id};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_judged_by_their_own_cluster() {
    let west = DevIssuer::generate("https://oidc.west.example").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = Env::start_with(|c| {
        c.auth.remote_clusters = vec![support::remote_jwt_cluster("west", &west, dir.path(), None)];
    })
    .await;
    let demo = id("default", "demo");
    let local_token = env.token("default", "demo");
    let west_token = west.token(&TokenSpec::new("default", "demo")).unwrap();
    let call = |token: &str, cluster: &str| CallOptions {
        token: Some(token.to_owned()),
        cluster_id: Some(cluster.to_owned()),
        ..env.opts("default", "demo")
    };

    let cases = [
        (&local_token, "Kubernetes", None),
        (&local_token, "", None),
        (&west_token, "west", None),
        // Cached for cluster Kubernetes, still refused when presented as cluster west.
        (
            &local_token,
            "west",
            Some((Code::Unauthenticated, "unknown key")),
        ),
        (
            &west_token,
            "Kubernetes",
            Some((Code::Unauthenticated, "unknown key")),
        ),
        (
            &west_token,
            "east",
            Some((Code::Unauthenticated, "cluster \"east\"")),
        ),
    ];
    let mut issued = 0;
    for (token, cluster, expect) in cases {
        let result = env
            .request(Shape::PilotAgent, &demo, &call(token, cluster))
            .await;
        match expect {
            None => {
                result.unwrap_or_else(|s| panic!("cluster {cluster:?}: {}", s.message()));
                issued += 1;
            }
            Some((code, message)) => {
                let err = result.expect_err(cluster);
                assert_eq!(err.code(), code, "cluster {cluster:?}: {}", err.message());
                assert!(
                    err.message().contains(message),
                    "cluster {cluster:?}: {}",
                    err.message()
                );
            }
        }
    }
    assert_eq!(env.bao.sign_calls(), issued);
}
