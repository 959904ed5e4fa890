//! Manifests: YAML (several documents) or JSON, in the proto3 JSON mapping (camelCase fields),
//! with `apiVersion: hanul/v1` and `kind`. Unknown fields are errors, and every error names the
//! document and the field path, because a manifest is something a person wrote by hand.

use crate::{
    Kind,
    v1::{
        AutoScalingGroup, DbCluster, DbClusterAutomatedBackup, DbInstance, DbParameterGroup,
        DbSnapshot, Event, Image, Instance, InstanceType, LaunchTemplate, LoadBalancer, Node,
        Object, Secret, TargetGroup, Volume, object::Resource,
    },
};
use serde_json::{Map, Value};

/// The only API version this server speaks.
pub const API_VERSION: &str = "hanul/v1";

/// A manifest that could not be read, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("{source_name}: not valid YAML or JSON: {message}")]
    Syntax {
        source_name: String,
        message: String,
    },
    #[error("{source_name}: document {index}{what}: {message}")]
    Document {
        source_name: String,
        index: usize,
        what: String,
        message: String,
    },
}

/// One object read from a manifest, with where it came from (for messages).
#[derive(Clone, Debug)]
pub struct ManifestObject {
    pub object: Object,
    pub source_name: String,
    /// 1-based document index within the source.
    pub index: usize,
}

/// Reads every document of a YAML or JSON text. Empty documents are skipped; a `{"items": [...]}`
/// list (what `hanul get -o json` prints for several objects) is flattened.
pub fn parse(source_name: &str, text: &str) -> Result<Vec<ManifestObject>, ManifestError> {
    let trimmed = text.trim_start();
    let docs: Vec<Value> = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| ManifestError::Syntax {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?;
        match v {
            Value::Array(items) => items,
            v => vec![v],
        }
    } else {
        serde_saphyr::from_multiple::<Value>(text).map_err(|e| ManifestError::Syntax {
            source_name: source_name.to_string(),
            message: e.to_string(),
        })?
    };

    let mut out = Vec::new();
    let mut index = 0;
    for doc in docs {
        if doc.is_null() {
            continue;
        }
        let items = match doc {
            Value::Object(mut m) if m.contains_key("items") && !m.contains_key("kind") => {
                match m.remove("items") {
                    Some(Value::Array(items)) => items,
                    _ => vec![],
                }
            }
            other => vec![other],
        };
        for item in items {
            index += 1;
            let object = from_value(item).map_err(|(what, message)| ManifestError::Document {
                source_name: source_name.to_string(),
                index,
                what,
                message,
            })?;
            out.push(ManifestObject {
                object,
                source_name: source_name.to_string(),
                index,
            });
        }
    }
    Ok(out)
}

/// Converts one manifest document to an object. The error is (" (Kind/name)", message).
pub fn from_value(doc: Value) -> Result<Object, (String, String)> {
    let Value::Object(mut map) = doc else {
        return Err((
            String::new(),
            "expected a mapping with apiVersion, kind, metadata".into(),
        ));
    };
    let kind_name = match map.remove("kind") {
        Some(Value::String(k)) => k,
        Some(_) => return Err((String::new(), "kind: must be a string".into())),
        None => {
            return Err((
                String::new(),
                format!("kind: required; known: {}", kind_list()),
            ));
        }
    };
    let name = map
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let what = format!(" ({kind_name}/{name})");
    let kind = Kind::ALL
        .iter()
        .copied()
        .find(|k| k.as_str() == kind_name)
        .ok_or_else(|| {
            (
                what.clone(),
                format!("kind: unknown kind {kind_name:?}; known: {}", kind_list()),
            )
        })?;
    match map.remove("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(v) => {
            return Err((
                what,
                format!("apiVersion: {v} is not served; use {API_VERSION}"),
            ));
        }
        None => return Err((what, format!("apiVersion: required; use {API_VERSION}"))),
    }
    let rest = Value::Object(map);
    let resource = match kind {
        Kind::Node => typed::<Node>(rest).map(Resource::Node),
        Kind::InstanceType => typed::<InstanceType>(rest).map(Resource::InstanceType),
        Kind::Image => typed::<Image>(rest).map(Resource::Image),
        Kind::Instance => typed::<Instance>(rest).map(Resource::Instance),
        Kind::Volume => typed::<Volume>(rest).map(Resource::Volume),
        Kind::Event => typed::<Event>(rest).map(Resource::Event),
        Kind::TargetGroup => typed::<TargetGroup>(rest).map(Resource::TargetGroup),
        Kind::LoadBalancer => typed::<LoadBalancer>(rest).map(Resource::LoadBalancer),
        Kind::AutoScalingGroup => typed::<AutoScalingGroup>(rest).map(Resource::AutoScalingGroup),
        Kind::LaunchTemplate => typed::<LaunchTemplate>(rest).map(Resource::LaunchTemplate),
        Kind::DbCluster => typed::<DbCluster>(rest).map(Resource::DbCluster),
        Kind::DbInstance => typed::<DbInstance>(rest).map(Resource::DbInstance),
        Kind::DbParameterGroup => typed::<DbParameterGroup>(rest).map(Resource::DbParameterGroup),
        Kind::DbSnapshot => typed::<DbSnapshot>(rest).map(Resource::DbSnapshot),
        Kind::Secret => typed::<Secret>(rest).map(Resource::Secret),
        Kind::DbClusterAutomatedBackup => {
            typed::<DbClusterAutomatedBackup>(rest).map(Resource::DbClusterAutomatedBackup)
        }
    }
    .map_err(|m| (what, m))?;
    Ok(Object {
        resource: Some(resource),
    })
}

fn typed<T>(v: Value) -> Result<T, String>
where
    T: serde::de::DeserializeOwned,
{
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

fn kind_list() -> String {
    Kind::ALL
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The manifest form of an object: `apiVersion`, `kind`, then metadata, spec and status.
pub fn to_value(object: &Object) -> Value {
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(API_VERSION.into()));
    let kind = object.kind().map(Kind::as_str).unwrap_or("");
    out.insert("kind".into(), Value::String(kind.into()));
    let body = match &object.resource {
        Some(Resource::Node(o)) => serde_json::to_value(o),
        Some(Resource::InstanceType(o)) => serde_json::to_value(o),
        Some(Resource::Image(o)) => serde_json::to_value(o),
        Some(Resource::Instance(o)) => serde_json::to_value(o),
        Some(Resource::Volume(o)) => serde_json::to_value(o),
        Some(Resource::Event(o)) => serde_json::to_value(o),
        Some(Resource::TargetGroup(o)) => serde_json::to_value(o),
        Some(Resource::LoadBalancer(o)) => serde_json::to_value(o),
        Some(Resource::AutoScalingGroup(o)) => serde_json::to_value(o),
        Some(Resource::LaunchTemplate(o)) => serde_json::to_value(o),
        Some(Resource::DbCluster(o)) => serde_json::to_value(o),
        Some(Resource::DbInstance(o)) => serde_json::to_value(o),
        Some(Resource::DbParameterGroup(o)) => serde_json::to_value(o),
        Some(Resource::DbSnapshot(o)) => serde_json::to_value(o),
        Some(Resource::Secret(o)) => serde_json::to_value(o),
        Some(Resource::DbClusterAutomatedBackup(o)) => serde_json::to_value(o),
        None => Ok(Value::Null),
    };
    // Serializing generated types into a Value cannot fail: no maps with non-string keys.
    if let Ok(Value::Object(m)) = body {
        out.extend(m);
    }
    Value::Object(out)
}

/// Prints objects as YAML documents separated by `---`.
pub fn to_yaml(objects: &[Object]) -> String {
    let mut out = String::new();
    for (i, o) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_saphyr::to_string(&to_value(o)).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
apiVersion: hanul/v1
kind: Image
metadata: {name: web-v1, labels: {app: web}}
spec:
  command: [python3, -m, http.server]
  workingDir: www
---
apiVersion: hanul/v1
kind: Instance
metadata:
  name: web-1
spec:
  image: web-v1
  instanceType: t3.micro
  ports: [{name: http}]
"#;

    #[test]
    fn multi_document_yaml_becomes_typed_objects() {
        let objs = parse("web.yaml", WEB).unwrap();
        assert_eq!(objs.len(), 2);
        assert_eq!(objs[0].object.kind(), Some(Kind::Image));
        assert_eq!(objs[1].object.key(), "Instance/web-1");
        assert_eq!(objs[1].index, 2);
        let Some(Resource::Instance(i)) = &objs[1].object.resource else {
            panic!()
        };
        assert_eq!(i.spec.as_ref().unwrap().ports[0].name, "http");
    }

    #[test]
    fn unknown_field_is_an_error_naming_document_and_path() {
        let text = WEB.replace("instanceType: t3.micro", "instanceTyp: t3.micro");
        let err = parse("web.yaml", &text).unwrap_err().to_string();
        assert!(err.contains("document 2 (Instance/web-1)"), "{err}");
        assert!(err.contains("spec.instanceTyp"), "{err}");
    }

    #[test]
    fn missing_kind_and_wrong_api_version_are_named() {
        let err = parse("x", "apiVersion: hanul/v1\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("kind: required"), "{err}");
        let err = parse("x", "apiVersion: v2\nkind: Image\nmetadata: {name: a}\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"apiVersion: "v2" is not served"#), "{err}");
        let err = parse("x", "apiVersion: hanul/v1\nkind: Bucket\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown kind \"Bucket\""), "{err}");
    }

    #[test]
    fn printed_objects_read_back_unchanged() {
        let objs: Vec<Object> = parse("web.yaml", WEB)
            .unwrap()
            .into_iter()
            .map(|m| m.object)
            .collect();
        let yaml = to_yaml(&objs);
        assert!(
            yaml.starts_with("apiVersion: hanul/v1\nkind: Image\n"),
            "{yaml}"
        );
        let again: Vec<Object> = parse("out", &yaml)
            .unwrap()
            .into_iter()
            .map(|m| m.object)
            .collect();
        assert_eq!(objs, again);
        let json = serde_json::json!({"items": objs.iter().map(to_value).collect::<Vec<_>>()});
        let again: Vec<Object> = parse("out.json", &json.to_string())
            .unwrap()
            .into_iter()
            .map(|m| m.object)
            .collect();
        assert_eq!(objs, again);
    }
}
