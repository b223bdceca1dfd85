//! A pod as the pod cache reads it from the API server: only what authorization needs.
//!
//! Decoding list pages and watch events into this type instead of `k8s_openapi`'s `Pod`
//! skips `managedFields`, containers, volumes, status conditions and every other field while
//! the JSON is read, so neither a page of pods nor a watch event is ever held as full objects
//! (a real pod is 3–10 KB of JSON; this keeps a few short strings).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::{IgnoredAny, MapAccess, Visitor};

/// Annotation the kubelet puts on the API server's mirror of a static pod.
pub const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// The fields of a pod that node authorization reads.
#[derive(Debug, Clone, Default)]
pub struct WatchedPod {
    /// `name`, `namespace`, `uid` and `resourceVersion` only.
    pub metadata: ObjectMeta,
    /// Carries the mirror-pod annotation.
    pub mirror: bool,
    /// The object has a `spec` (every real pod does).
    pub has_spec: bool,
    pub service_account: Option<String>,
    pub node: Option<String>,
    /// `status.phase`.
    pub phase: Option<String>,
}

impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            /// `null` reads as absent, as k8s_openapi reads it (found by fuzzing).
            #[serde(default)]
            metadata: Option<RawMeta>,
            #[serde(default)]
            spec: Option<RawSpec>,
            #[serde(default)]
            status: Option<RawStatus>,
        }
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase")]
        struct RawMeta {
            name: Option<String>,
            namespace: Option<String>,
            uid: Option<String>,
            resource_version: Option<String>,
            #[serde(default)]
            annotations: Option<MirrorFlag>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct RawSpec {
            service_account_name: Option<String>,
            node_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct RawStatus {
            phase: Option<String>,
        }
        let raw = Raw::deserialize(d)?;
        let meta = raw.metadata.unwrap_or_default();
        Ok(Self {
            metadata: ObjectMeta {
                name: meta.name,
                namespace: meta.namespace,
                uid: meta.uid,
                resource_version: meta.resource_version,
                ..Default::default()
            },
            mirror: meta.annotations.is_some_and(|m| m.0),
            has_spec: raw.spec.is_some(),
            service_account: raw
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.clone()),
            node: raw.spec.and_then(|s| s.node_name),
            phase: raw.status.and_then(|s| s.phase),
        })
    }
}

/// Whether an annotation map holds [`MIRROR_ANNOTATION`]; values are skipped unread.
struct MirrorFlag(bool);

impl<'de> Deserialize<'de> for MirrorFlag {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> Visitor<'de> for Keys {
            type Value = MirrorFlag;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an annotation map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MirrorFlag, A::Error> {
                let mut mirror = false;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    mirror |= key == MIRROR_ANNOTATION;
                    map.next_value::<IgnoredAny>()?;
                }
                Ok(MirrorFlag(mirror))
            }
        }
        d.deserialize_map(Keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_only_what_authorization_needs() {
        let json = r#"{"metadata": {"name": "p", "namespace": "a", "uid": "u1", "resourceVersion": "7",
            "annotations": {"x": "{\"nested\": 1}", "kubernetes.io/config.mirror": "h"},
            "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}], "labels": {"app": "p"}},
            "spec": {"serviceAccountName": "sa", "nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]}}"#;
        let pod: WatchedPod = serde_json::from_str(json).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("p"));
        assert_eq!(pod.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("7"));
        assert!(pod.metadata.labels.is_none() && pod.metadata.managed_fields.is_none());
        assert!(pod.mirror && pod.has_spec);
        assert_eq!(pod.service_account.as_deref(), Some("sa"));
        assert_eq!(pod.node.as_deref(), Some("n1"));
        assert_eq!(pod.phase.as_deref(), Some("Running"));
        let bare: WatchedPod =
            serde_json::from_str(r#"{"metadata": {"annotations": null}}"#).unwrap();
        assert!(!bare.mirror && !bare.has_spec);
    }
}
