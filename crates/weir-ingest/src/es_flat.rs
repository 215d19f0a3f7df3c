//! An Elasticsearch document read straight into its flattened fields.
//!
//! The mapping ([`crate::es_doc_to_record`]) wants `{"log":{"level":"x"}}` and
//! `{"log.level":"x"}` alike as the key `log.level`. Parsing into a `serde_json::Value`
//! tree and flattening it afterwards allocated every key twice, every string value twice
//! (once in the tree, once as the attribute) and a map node per object: a third of the
//! `_bulk` path's CPU. [`Document::parse`] walks the JSON once with a serde visitor that
//! appends each key to one reused path buffer and moves each string into its field, so a
//! field costs one allocation for its key and one for its value.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Nesting past this many objects is kept as the JSON text of the deeper part.
pub(crate) const FLATTEN_DEPTH_MAX: usize = 32;

/// Top-level keys whose value is kept whole rather than flattened, because the body may be
/// taken from them and a structured body is stored as its JSON text.
const WHOLE_KEYS: [&str; 2] = ["message", "msg"];

/// One field's value.
#[derive(Clone, Debug, PartialEq)]
pub enum FlatValue {
    /// A JSON string.
    Str(String),
    /// Anything else: a number, `true`/`false`, `null`, an array, or an object kept whole
    /// (a top-level `message`/`msg`, or nesting deeper than the flattening goes).
    Json(Value),
}

impl FlatValue {
    /// A string as it is, anything else as its JSON text.
    pub fn into_text(self) -> String {
        match self {
            FlatValue::Str(s) => s,
            FlatValue::Json(v) => v.to_string(),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FlatValue::Str(s) => Some(s),
            FlatValue::Json(_) => None,
        }
    }

    /// Whether this is a JSON array.
    pub fn is_array(&self) -> bool {
        matches!(self, FlatValue::Json(Value::Array(_)))
    }

    /// Whether this is a JSON object (kept whole).
    pub fn is_object(&self) -> bool {
        matches!(self, FlatValue::Json(Value::Object(_)))
    }
}

/// A document as its flattened fields, in document order: `(dotted key, value)`. Objects
/// are flattened (empty ones vanish); arrays and scalars are leaves. The keys share one
/// buffer: most of them name record fields and are never needed as strings of their own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Document {
    /// Every key, one after the other.
    pub(crate) keys: String,
    /// Each field's key (a range of `keys`) and value, in the order the document has them.
    pub(crate) fields: Vec<(std::ops::Range<usize>, FlatValue)>,
}

/// Where the visitors put what they read.
struct Sink {
    keys: String,
    fields: Vec<(std::ops::Range<usize>, FlatValue)>,
}

impl Sink {
    fn push(&mut self, key: &str, v: FlatValue) {
        let start = self.keys.len();
        self.keys.push_str(key);
        self.fields.push((start..self.keys.len(), v));
    }
}

impl Document {
    /// Reads one JSON object.
    ///
    /// # Errors
    ///
    /// serde_json's message when the text is not JSON, or `"not a JSON object"`.
    ///
    /// ```
    /// use weir_ingest::es_flat::{Document, FlatValue};
    /// let d = Document::parse(br#"{"log":{"level":"warn"},"n":[1],"message":{"a":1}}"#).unwrap();
    /// let keys: Vec<&str> = d.iter().map(|(k, _)| k).collect();
    /// assert_eq!(keys, ["log.level", "n", "message"]);
    /// assert_eq!(d.iter().next().unwrap().1, &FlatValue::Str("warn".into()));
    /// ```
    pub fn parse(json: &[u8]) -> Result<Document, DocumentError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        // Sized once: growing these while reading was a tenth of the parse. Keys are never
        // longer than the text they are read from, and 16 fields cover a typical document.
        let mut sink = Sink {
            keys: String::with_capacity(json.len().min(4096)),
            fields: Vec::with_capacity(16),
        };
        let mut path = String::with_capacity(64);
        de.deserialize_any(Top {
            path: &mut path,
            out: &mut sink,
        })
        .map_err(|e| {
            if e.to_string().starts_with(NOT_AN_OBJECT) {
                DocumentError::NotAnObject
            } else {
                DocumentError::Json(e.to_string())
            }
        })?;
        de.end().map_err(|e| DocumentError::Json(e.to_string()))?;
        Ok(Document {
            keys: sink.keys,
            fields: sink.fields,
        })
    }

    /// A document from an already parsed JSON object (tests, examples).
    ///
    /// # Errors
    ///
    /// As [`Document::parse`].
    pub fn from_value(v: &Value) -> Result<Document, DocumentError> {
        Document::parse(v.to_string().as_bytes())
    }

    /// The fields, in document order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FlatValue)> {
        self.fields.iter().map(|(k, v)| (&self.keys[k.clone()], v))
    }

    /// How many fields there are.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Why a source line is not a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocumentError {
    /// Not JSON: serde_json's message.
    Json(String),
    /// JSON, but not an object.
    NotAnObject,
}

const NOT_AN_OBJECT: &str = "weir: not a JSON object";

/// The document itself: only an object is one.
struct Top<'a> {
    path: &'a mut String,
    out: &'a mut Sink,
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Object {
            path: self.path,
            out: self.out,
            depth: 0,
        }
        .visit_map(map)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(NOT_AN_OBJECT))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(NOT_AN_OBJECT))
    }
}

/// The fields of one object at `depth`, under `path`.
struct Object<'a> {
    path: &'a mut String,
    out: &'a mut Sink,
    depth: usize,
}

impl<'de> Visitor<'de> for Object<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let base = self.path.len();
        while map
            .next_key_seed(Key {
                path: self.path,
                dot: self.depth > 0,
            })?
            .is_some()
        {
            let whole = self.depth == 0 && WHOLE_KEYS.contains(&self.path.as_str());
            if whole || self.depth + 1 >= FLATTEN_DEPTH_MAX {
                let v: Value = map.next_value()?;
                let v = match v {
                    Value::String(s) => FlatValue::Str(s),
                    other => FlatValue::Json(other),
                };
                self.out.push(self.path, v);
            } else {
                map.next_value_seed(Field {
                    path: self.path,
                    out: self.out,
                    depth: self.depth,
                })?;
            }
            self.path.truncate(base);
        }
        Ok(())
    }
}

/// Appends a key to the path (after a `.` below the top).
struct Key<'a> {
    path: &'a mut String,
    dot: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, k: &str) -> Result<(), E> {
        if self.dot {
            self.path.push('.');
        }
        self.path.push_str(k);
        Ok(())
    }
}

/// The value of the field whose key is the path: a leaf, or an object to flatten.
struct Field<'a> {
    path: &'a mut String,
    out: &'a mut Sink,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Field<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Field<'_> {
    fn leaf(self, v: FlatValue) {
        self.out.push(self.path, v);
    }
}

impl<'de> Visitor<'de> for Field<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.leaf(FlatValue::Str(s.to_owned()));
        Ok(())
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<(), E> {
        self.leaf(FlatValue::Str(s));
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        self.leaf(FlatValue::Json(Value::Bool(b)));
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.leaf(FlatValue::Json(Value::from(n)));
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.leaf(FlatValue::Json(Value::from(n)));
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        // serde_json only hands out finite floats.
        self.leaf(FlatValue::Json(
            serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
        ));
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.leaf(FlatValue::Json(Value::Null));
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<Value>()? {
            items.push(v);
        }
        self.leaf(FlatValue::Json(Value::Array(items)));
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        Object {
            path: self.path,
            out: self.out,
            depth: self.depth + 1,
        }
        .visit_map(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(d: &Document) -> Vec<&str> {
        d.iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn nested_and_dotted_keys_flatten_alike_in_document_order() {
        let d = Document::parse(
            br#"{"z":1,"log":{"level":"x","file":{"path":"/a"}},"log.level":"y","empty":{},"a":[1,{"b":2}],"t":true,"n":null,"f":1.5}"#,
        )
        .unwrap();
        assert_eq!(
            keys(&d),
            [
                "z",
                "log.level",
                "log.file.path",
                "log.level",
                "a",
                "t",
                "n",
                "f"
            ]
        );
        assert_eq!(d.iter().next().unwrap().1.clone().into_text(), "1");
        assert_eq!(
            d.iter().nth(4).unwrap().1.clone().into_text(),
            r#"[1,{"b":2}]"#
        );
        assert_eq!(d.iter().nth(5).unwrap().1.clone().into_text(), "true");
        assert_eq!(d.iter().nth(6).unwrap().1.clone().into_text(), "null");
        assert_eq!(d.iter().nth(7).unwrap().1.clone().into_text(), "1.5");
    }

    #[test]
    fn a_top_level_message_is_kept_whole_and_escapes_are_decoded() {
        let d = Document::parse(
            br#"{"message":{"a":{"b":1}},"msg":"q\"\u00e9","x":{"message":{"c":2}}}"#,
        )
        .unwrap();
        assert_eq!(keys(&d), ["message", "msg", "x.message.c"]);
        assert!(d.iter().next().unwrap().1.is_object());
        assert_eq!(d.iter().nth(1).unwrap().1.as_str(), Some("q\"é"));
    }

    #[test]
    fn too_deep_nesting_is_kept_as_json_text() {
        let mut v = json!("leaf");
        for _ in 0..40 {
            v = json!({ "k": v });
        }
        let d = Document::from_value(&v).unwrap();
        assert_eq!(d.len(), 1);
        let (k, v) = d.iter().next().unwrap();
        assert_eq!(k.matches('k').count(), FLATTEN_DEPTH_MAX);
        assert!(v.is_object());
    }

    #[test]
    fn non_objects_and_broken_json_are_refused() {
        assert_eq!(Document::parse(b"[1]"), Err(DocumentError::NotAnObject));
        assert_eq!(Document::parse(b"\"s\""), Err(DocumentError::NotAnObject));
        assert!(
            matches!(Document::parse(b"{nope"), Err(DocumentError::Json(m)) if m.contains("key must be a string"))
        );
        assert!(matches!(
            Document::parse(b"{} x"),
            Err(DocumentError::Json(_))
        ));
    }
}
