//! JSON output with keys in the order Elasticsearch writes them (`serde_json::Value`
//! sorts keys), and Elasticsearch's error shapes.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value;

/// A JSON value whose objects keep insertion order.
#[derive(Clone, Debug)]
pub(crate) enum Out {
    V(Value),
    O(Vec<(String, Out)>),
    A(Vec<Out>),
}

impl Serialize for Out {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Out::V(v) => v.serialize(s),
            Out::O(members) => {
                let mut m = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Out::A(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

impl Out {
    /// The value as `serde_json::Value` (key order is lost).
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Out::V(v) => v.clone(),
            Out::O(members) => Value::Object(
                members
                    .iter()
                    .map(|(k, v)| (k.clone(), v.to_value()))
                    .collect(),
            ),
            Out::A(items) => Value::Array(items.iter().map(Out::to_value).collect()),
        }
    }
}

macro_rules! out_from {
    ($($t:ty),*) => {
        $(impl From<$t> for Out {
            fn from(v: $t) -> Self {
                Out::V(Value::from(v))
            }
        })*
    };
}

out_from!(&str, String, u64, i64, u32, u16, usize, bool);

impl From<Value> for Out {
    fn from(v: Value) -> Self {
        Out::V(v)
    }
}

impl From<Option<String>> for Out {
    fn from(v: Option<String>) -> Self {
        Out::V(v.map_or(Value::Null, Value::String))
    }
}

/// An ordered object from `(key, value)` pairs.
pub(crate) fn obj<const N: usize>(pairs: [(&str, Out); N]) -> Out {
    Out::O(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A whole-request Elasticsearch error: `{"error":{"root_cause":[..],"type","reason"},"status"}`.
#[derive(Clone, Debug)]
pub(crate) struct EsError {
    pub status: u16,
    pub error_type: String,
    pub reason: String,
    /// Extra fields of the cause (`index`, `resource.id`...), in order.
    pub extra: Vec<(String, Out)>,
    /// Response headers (`WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl EsError {
    /// An error of `error_type` with `reason`.
    pub(crate) fn new(status: u16, error_type: &str, reason: impl Into<String>) -> Self {
        Self {
            status,
            error_type: error_type.to_string(),
            reason: reason.into(),
            extra: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// 400 `illegal_argument_exception`.
    pub(crate) fn illegal_argument(reason: impl Into<String>) -> Self {
        Self::new(400, "illegal_argument_exception", reason)
    }

    /// 400 `action_request_validation_exception` listing `errors` as Elasticsearch does
    /// (`Validation Failed: 1: ..;2: ..;`).
    pub(crate) fn validation(errors: &[String]) -> Self {
        let mut reason = String::from("Validation Failed: ");
        for (i, e) in errors.iter().enumerate() {
            reason.push_str(&format!("{}: {e};", i + 1));
        }
        Self::new(400, "action_request_validation_exception", reason)
    }

    /// 404 `index_not_found_exception` for `index`.
    pub(crate) fn index_not_found(index: &str) -> Self {
        let mut e = Self::new(
            404,
            "index_not_found_exception",
            format!("no such index [{index}]"),
        );
        e.extra = vec![
            ("resource.type".into(), "index_or_alias".into()),
            ("resource.id".into(), index.into()),
            ("index_uuid".into(), "_na_".into()),
            ("index".into(), index.into()),
        ];
        e
    }

    /// Adds a field to the cause.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Out>) -> Self {
        self.extra.push((key.to_string(), value.into()));
        self
    }

    fn cause(&self) -> Out {
        let mut members = vec![
            ("type".to_string(), Out::from(self.error_type.as_str())),
            ("reason".to_string(), Out::from(self.reason.as_str())),
        ];
        members.extend(self.extra.iter().cloned());
        Out::O(members)
    }

    /// The response body.
    pub(crate) fn body(&self) -> Out {
        let Out::O(mut error) = self.cause() else {
            return Out::V(Value::Null);
        };
        error.insert(0, ("root_cause".into(), Out::A(vec![self.cause()])));
        obj([("error", Out::O(error)), ("status", self.status.into())])
    }
}
