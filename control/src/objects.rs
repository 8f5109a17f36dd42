//! Reading Kubernetes objects from YAML, as `kubectl get svc,endpointslices,nodes -A
//! -o yaml` prints them.
//!
//! A file is a stream of YAML documents (JSON is YAML too, so `-o json` reads the same
//! way). A document is one object or a list whose `items` are objects: kubectl's
//! `kind: List`, or a typed list such as `ServiceList` as the API server returns it,
//! whose items carry no `apiVersion`/`kind` of their own. kxdp keeps `v1` Service,
//! `v1` Node and `discovery.k8s.io/v1` EndpointSlice and ignores every other kind.
//!
//! One bad object must not hide the others: an object that does not deserialize
//! becomes an [`ObjectError`] naming it as far as its metadata can be read, and the
//! rest load. Only a YAML syntax error ends the file, because the parser cannot find
//! the next document after one.

/// The k8s-openapi these objects are made of, so that callers which build objects in
/// code (tests, benchmarks, the API-server source) name the very same types.
pub use k8s_openapi;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::Deserialize;
use serde_yaml::Value;

/// The objects kxdp translates, in the order the file listed them.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    pub nodes: Vec<Node>,
}

/// What [`parse_objects`] read: the objects that loaded and why the others did not.
#[derive(Clone, Debug, Default)]
pub struct Parsed {
    pub objects: Objects,
    pub errors: Vec<ObjectError>,
}

/// One object (or one of its fields) kxdp could not use. The rest still apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ObjectError {
    /// `Service`, `EndpointSlice`, `Node`, or `YAML document` when the file itself is
    /// at fault.
    pub kind: String,
    /// None for cluster-scoped objects (Nodes) and for whole documents.
    pub namespace: Option<String>,
    /// Empty when the object has no readable `metadata.name`.
    pub name: String,
    pub reason: String,
}

impl std::fmt::Display for ObjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ", self.kind)?;
        if let Some(ns) = &self.namespace {
            write!(f, "{ns}/")?;
        }
        if self.name.is_empty() {
            write!(f, "(no name)")?;
        } else {
            write!(f, "{}", self.name)?;
        }
        write!(f, ": {}", self.reason)
    }
}

impl ObjectError {
    /// An error about a namespaced object.
    pub fn namespaced(
        kind: &str,
        namespace: &str,
        name: &str,
        reason: impl Into<String>,
    ) -> ObjectError {
        ObjectError {
            kind: kind.to_owned(),
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
            reason: reason.into(),
        }
    }

    /// An error about a cluster-scoped object.
    pub fn cluster(kind: &str, name: &str, reason: impl Into<String>) -> ObjectError {
        ObjectError {
            kind: kind.to_owned(),
            namespace: None,
            name: name.to_owned(),
            reason: reason.into(),
        }
    }
}

/// The kinds kxdp reads, by `apiVersion` and `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wanted {
    Service,
    EndpointSlice,
    Node,
}

impl Wanted {
    fn of(api_version: &str, kind: &str) -> Option<Wanted> {
        match (api_version, kind) {
            ("v1", "Service") => Some(Wanted::Service),
            ("v1", "Node") => Some(Wanted::Node),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Wanted::EndpointSlice),
            _ => None,
        }
    }
}

/// Reads every Service, EndpointSlice and Node in a multi-document YAML text.
pub fn parse_objects(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut last_yaml_error: Option<String> = None;
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = i + 1;
        match Value::deserialize(document) {
            Ok(value) => {
                last_yaml_error = None;
                parsed.read_document(doc_no, value);
            }
            Err(e) => {
                let reason = e.to_string();
                // After a syntax error serde_yaml hands out the same error as every
                // following document, forever: the parser cannot resynchronise. Errors
                // it recovers from (a duplicate key) are followed by a fresh document.
                if last_yaml_error.as_deref() == Some(reason.as_str()) {
                    break;
                }
                parsed.errors.push(ObjectError {
                    kind: "YAML document".to_owned(),
                    namespace: None,
                    name: format!("#{doc_no}"),
                    reason: reason.clone(),
                });
                last_yaml_error = Some(reason);
            }
        }
    }
    parsed
}

impl Parsed {
    fn read_document(&mut self, doc_no: usize, value: Value) {
        let Value::Mapping(mut map) = value else {
            if !value.is_null() {
                // An empty document (`---` twice, a trailing `---`) is fine; a scalar or
                // a sequence is not an object at all.
                self.errors.push(ObjectError {
                    kind: "YAML document".to_owned(),
                    namespace: None,
                    name: format!("#{doc_no}"),
                    reason: "not a Kubernetes object (want a mapping with apiVersion and kind)"
                        .to_owned(),
                });
            }
            return;
        };
        let api_version = str_field(&map, "apiVersion").unwrap_or_default().to_owned();
        let kind = str_field(&map, "kind").unwrap_or_default().to_owned();
        if let Some(item_kind) = kind.strip_suffix("List") {
            let Some(Value::Sequence(items)) = map.remove("items") else {
                self.errors.push(ObjectError {
                    kind: "YAML document".to_owned(),
                    namespace: None,
                    name: format!("#{doc_no}"),
                    reason: format!("a {kind} without a sequence of items"),
                });
                return;
            };
            for (j, item) in items.into_iter().enumerate() {
                // kubectl's `kind: List` items name their own kind; a typed list's
                // (`ServiceList`) items inherit it from the list.
                let inherit = (!item_kind.is_empty()).then_some((api_version.as_str(), item_kind));
                self.read_object(&format!("#{doc_no} items[{j}]"), item, inherit);
            }
        } else {
            self.read_object(&format!("#{doc_no}"), Value::Mapping(map), None);
        }
    }

    /// Reads one object; `inherit` is the (apiVersion, kind) of a typed list.
    fn read_object(&mut self, place: &str, value: Value, inherit: Option<(&str, &str)>) {
        let Value::Mapping(ref map) = value else {
            self.errors.push(ObjectError {
                kind: "YAML document".to_owned(),
                namespace: None,
                name: place.to_owned(),
                reason: "not a Kubernetes object (want a mapping with apiVersion and kind)"
                    .to_owned(),
            });
            return;
        };
        let (api_version, kind) = match (str_field(map, "apiVersion"), str_field(map, "kind")) {
            (Some(a), Some(k)) => (a, k),
            (a, k) => match inherit {
                Some((ia, ik)) => (a.unwrap_or(ia), k.unwrap_or(ik)),
                None => {
                    self.errors.push(ObjectError {
                        kind: "YAML document".to_owned(),
                        namespace: None,
                        name: place.to_owned(),
                        reason: "not a Kubernetes object: apiVersion or kind is missing".to_owned(),
                    });
                    return;
                }
            },
        };
        let Some(wanted) = Wanted::of(api_version, kind) else {
            tracing::debug!(
                api_version,
                kind,
                name = meta_str(map, "name").unwrap_or_default(),
                "ignoring an object kxdp does not use"
            );
            return;
        };
        let kind = kind.to_owned();
        let namespace = meta_str(map, "namespace").map(str::to_owned);
        let name = meta_str(map, "name").unwrap_or_default().to_owned();
        let fail = |e: serde_yaml::Error| ObjectError {
            kind: kind.clone(),
            // Nodes are cluster-scoped: a namespace there would only confuse.
            namespace: if wanted == Wanted::Node {
                None
            } else {
                namespace.clone()
            },
            name: name.clone(),
            reason: e.to_string(),
        };
        let objects = &mut self.objects;
        let result = match wanted {
            Wanted::Service => serde_yaml::from_value(value).map(|o| objects.services.push(o)),
            Wanted::EndpointSlice => serde_yaml::from_value(value).map(|o| objects.slices.push(o)),
            Wanted::Node => serde_yaml::from_value(value).map(|o| objects.nodes.push(o)),
        };
        if let Err(e) = result {
            self.errors.push(fail(e));
        }
    }
}

fn str_field<'a>(map: &'a serde_yaml::Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn meta_str<'a>(map: &'a serde_yaml::Mapping, key: &str) -> Option<&'a str> {
    match map.get("metadata") {
        Some(Value::Mapping(meta)) => str_field(meta, key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 198.19.0.10, ports: [{name: http, port: 80}]}
";

    const NODE: &str = "
apiVersion: v1
kind: Node
metadata: {name: node1}
spec: {podCIDR: 198.18.1.0/24}
";

    const SLICE: &str = "
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: default
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
endpoints: [{addresses: [198.18.1.10]}]
ports: [{name: http, port: 8080}]
";

    #[test]
    fn separate_documents_load_by_kind() {
        let text = format!("{SERVICE}---{NODE}---{SLICE}");
        let p = parse_objects(&text);
        assert_eq!(p.errors, vec![]);
        assert_eq!(p.objects.services.len(), 1);
        assert_eq!(p.objects.nodes.len(), 1);
        assert_eq!(p.objects.slices.len(), 1);
        assert_eq!(p.objects.services[0].metadata.name.as_deref(), Some("web"));
    }

    #[test]
    fn kubectl_list_items_load_by_their_own_kind() {
        let text = "
apiVersion: v1
kind: List
metadata: {resourceVersion: ''}
items:
- apiVersion: v1
  kind: Service
  metadata: {name: a, namespace: default}
  spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
- apiVersion: v1
  kind: Node
  metadata: {name: node1}
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: ignored, namespace: default}
";
        let p = parse_objects(text);
        assert_eq!(p.errors, vec![]);
        assert_eq!(p.objects.services.len(), 1);
        assert_eq!(p.objects.nodes.len(), 1);
    }

    #[test]
    fn typed_list_items_inherit_the_list_kind() {
        let text = "
apiVersion: v1
kind: ServiceList
items:
- metadata: {name: a, namespace: default}
  spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
- metadata: {name: b, namespace: default}
  spec: {clusterIP: 198.19.0.2, ports: [{port: 80}]}
";
        let p = parse_objects(text);
        assert_eq!(p.errors, vec![]);
        assert_eq!(p.objects.services.len(), 2);
    }

    #[test]
    fn json_as_kubectl_prints_it_loads() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}}]}"#;
        let p = parse_objects(text);
        assert_eq!(p.errors, vec![]);
        assert_eq!(p.objects.nodes.len(), 1);
    }

    #[test]
    fn empty_documents_and_empty_files_are_fine() {
        for text in ["", "---\n", "---\n---\n", &format!("---\n---{NODE}---\n")] {
            let p = parse_objects(text);
            assert_eq!(p.errors, vec![], "{text:?}");
        }
    }

    #[test]
    fn other_kinds_and_versions_are_ignored() {
        let text = "
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: default}
---
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: web-x, namespace: default}
";
        let p = parse_objects(text);
        assert_eq!(p.errors, vec![]);
        assert!(p.objects.slices.is_empty());
    }

    #[test]
    fn an_undeserializable_object_is_named_and_the_others_load() {
        let text = format!(
            "{SERVICE}---
apiVersion: v1
kind: Service
metadata: {{name: broken, namespace: shop}}
spec: {{ports: [{{port: eighty}}]}}
---{NODE}"
        );
        let p = parse_objects(&text);
        assert_eq!(p.objects.services.len(), 1);
        assert_eq!(p.objects.nodes.len(), 1);
        assert_eq!(p.errors.len(), 1);
        let e = &p.errors[0];
        assert_eq!(
            (e.kind.as_str(), e.namespace.as_deref(), e.name.as_str()),
            ("Service", Some("shop"), "broken")
        );
        assert!(e.reason.contains("eighty"), "{e}");
        assert!(e.to_string().starts_with("Service shop/broken: "), "{e}");
    }

    #[test]
    fn a_bad_list_item_does_not_take_the_list_down() {
        let text = "
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: bad}
  spec: {podCIDRs: 7}
- apiVersion: v1
  kind: Node
  metadata: {name: good}
";
        let p = parse_objects(text);
        assert_eq!(p.objects.nodes.len(), 1);
        assert_eq!(p.errors.len(), 1);
        assert!(
            p.errors[0].to_string().starts_with("Node bad: "),
            "{}",
            p.errors[0]
        );
    }

    #[test]
    fn a_file_that_is_not_yaml_is_one_error() {
        for text in [
            "\x00\x01garbage",
            "a: [1, 2\n",
            &format!("{NODE}---\n\tbad: tab\n---{SERVICE}"),
        ] {
            let p = parse_objects(text);
            assert_eq!(p.errors.len(), 1, "{text:?}: {:?}", p.errors);
            assert_eq!(p.errors[0].kind, "YAML document");
        }
    }

    #[test]
    fn a_scalar_document_is_not_an_object() {
        let p = parse_objects("just some words\n");
        assert_eq!(p.errors.len(), 1);
        assert!(p.errors[0].reason.contains("not a Kubernetes object"));
    }

    #[test]
    fn a_duplicate_key_spoils_only_its_document() {
        let text = format!("a: 1\na: 2\n---{NODE}");
        let p = parse_objects(&text);
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert_eq!(p.objects.nodes.len(), 1);
    }

    #[test]
    fn display_names_kind_namespace_and_name() {
        let e = ObjectError::namespaced(
            "Service",
            "default",
            "web",
            "spec.ports[0].port: 70000 is out of range",
        );
        assert_eq!(
            e.to_string(),
            "Service default/web: spec.ports[0].port: 70000 is out of range"
        );
        let e = ObjectError::cluster("Node", "node2", "no IPv4 pod CIDR");
        assert_eq!(e.to_string(), "Node node2: no IPv4 pod CIDR");
    }
}
