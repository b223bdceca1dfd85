//! Targets `pods` (pod-watch event sequences against a model) and `watched_pod` (the slim
//! pod decoding against `k8s_openapi`'s Pod).

use std::collections::BTreeMap;

use kube::runtime::watcher;

use crate::nodes::PodIndex;

/// `len` pseudo-random bytes from `state` (xorshift64): event sequences for the `pods` model
/// test and seed corpora, without a dependency. `state` must not be zero.
pub fn pseudo_random(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            *state as u8
        })
        .collect()
}

/// A pod as the API server would send it, decoded from three fuzz bytes.
#[derive(Debug, Clone)]
struct PodSpec {
    uid: u8,
    ns: &'static str,
    sa: Option<&'static str>,
    node: &'static str,
    phase: &'static str,
    mirror: bool,
}

const NAMESPACES: [&str; 2] = ["a", "b"];
const ACCOUNTS: [Option<&str>; 4] = [Some("x"), Some("y"), Some(""), None];
const NODES: [&str; 2] = ["n1", "n2"];
const PHASES: [&str; 5] = ["Pending", "Running", "Succeeded", "Failed", "Unknown"];
const UIDS: u8 = 12;

impl PodSpec {
    fn decode(b1: u8, b2: u8) -> Self {
        Self {
            uid: b1 % UIDS,
            ns: NAMESPACES[usize::from(b1 / UIDS) % 2],
            sa: ACCOUNTS[usize::from(b2 % 4)],
            node: NODES[usize::from(b2 >> 2) % 2],
            phase: PHASES[usize::from(b2 >> 3) % 5],
            mirror: b2 >> 6 == 3,
        }
    }

    fn pod(&self) -> crate::nodes::WatchedPod {
        let mut meta = serde_json::json!({
            "name": format!("p{}", self.uid), "namespace": self.ns, "uid": format!("u{}", self.uid),
        });
        if self.mirror {
            meta["annotations"] = serde_json::json!({"kubernetes.io/config.mirror": "hash"});
        }
        let mut spec = serde_json::json!({"nodeName": self.node, "containers": []});
        if let Some(sa) = self.sa {
            spec["serviceAccountName"] = sa.into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": meta, "spec": spec, "status": {"phase": self.phase}
        }))
        .expect("pod JSON")
    }

    /// The model's rule, written independently of `nodes::workload`.
    fn counts(&self) -> bool {
        !self.mirror
            && self.sa.is_some_and(|s| !s.is_empty())
            && self.phase != "Succeeded"
            && self.phase != "Failed"
    }
}

/// Pod-watch event sequences (three bytes an event: kind, pod, details) against a model that
/// keeps the latest object per pod and applies re-lists only when complete: after every
/// event, every answer the index gives (pod counts, runs-on, pod look-ups) matches the model.
pub fn pods(data: &[u8]) {
    let index = PodIndex::default();
    let mut relist = crate::nodes::Relist::default();
    let mut model: BTreeMap<u8, PodSpec> = BTreeMap::new();
    let mut listing: Option<BTreeMap<u8, PodSpec>> = None;
    for event in data.chunks_exact(3) {
        let s = PodSpec::decode(event[1], event[2]);
        let event = match event[0] % 10 {
            0 => {
                listing = Some(BTreeMap::new());
                watcher::Event::Init
            }
            1 | 2 if listing.is_some() => {
                listing.as_mut().expect("listing").insert(s.uid, s.clone());
                watcher::Event::InitApply(s.pod())
            }
            3 => {
                if let Some(l) = listing.take() {
                    model = l;
                }
                watcher::Event::InitDone
            }
            4 => {
                model.remove(&s.uid);
                watcher::Event::Delete(s.pod())
            }
            _ => {
                model.insert(s.uid, s.clone());
                watcher::Event::Apply(s.pod())
            }
        };
        index.handle(&mut relist, event);
        let live: Vec<&PodSpec> = model.values().filter(|s| s.counts()).collect();
        assert_eq!(index.pod_count(), live.len());
        for ns in NAMESPACES {
            for sa in ["x", "y", "", "default"] {
                for node in NODES {
                    let want = live
                        .iter()
                        .any(|s| s.ns == ns && s.sa == Some(sa) && s.node == node);
                    assert_eq!(index.runs_on(ns, sa, node), want, "{ns}/{sa} on {node}");
                }
            }
        }
        for uid in 0..UIDS {
            let want = model.get(&uid).filter(|s| s.counts());
            for ns in NAMESPACES {
                let got = index.pod(ns, &format!("p{uid}"));
                match want.filter(|s| s.ns == ns) {
                    Some(s) => {
                        let got = got.expect("live pod missing");
                        assert_eq!(Some(got.service_account.as_str()), s.sa);
                        assert_eq!(got.node.as_deref(), Some(s.node));
                    }
                    None => assert!(got.is_none(), "p{uid} in {ns} should not count"),
                }
            }
        }
    }
}

/// A pod's JSON decoded by the pod cache's slim type, against the full `k8s_openapi` Pod:
/// whenever the full type decodes, the slim one does too and reads the same name, namespace,
/// UID, service account, node, phase and mirror annotation.
pub fn watched_pod(data: &[u8]) {
    use k8s_openapi::api::core::v1::Pod;
    let slim = serde_json::from_slice::<crate::nodes::WatchedPod>(data);
    let Ok(full) = serde_json::from_slice::<Pod>(data) else {
        return;
    };
    let slim = match slim {
        Ok(slim) => slim,
        // Stricter than k8s_openapi (which keeps the last of repeated keys): refused, never
        // read differently. The API server never repeats a key.
        Err(e) if e.to_string().contains("duplicate field") => return,
        Err(e) => panic!("the slim type refuses what the full one decodes: {e}"),
    };
    let m = &full.metadata;
    assert_eq!(
        (
            &slim.metadata.name,
            &slim.metadata.namespace,
            &slim.metadata.uid
        ),
        (&m.name, &m.namespace, &m.uid)
    );
    let spec = full.spec.as_ref();
    assert_eq!(slim.has_spec, spec.is_some());
    assert_eq!(
        slim.service_account,
        spec.and_then(|s| s.service_account_name.clone())
    );
    assert_eq!(slim.node, spec.and_then(|s| s.node_name.clone()));
    assert_eq!(
        slim.phase,
        full.status.as_ref().and_then(|s| s.phase.clone())
    );
    let mirror = m
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(crate::nodes::MIRROR_ANNOTATION));
    assert_eq!(slim.mirror, mirror);
}
