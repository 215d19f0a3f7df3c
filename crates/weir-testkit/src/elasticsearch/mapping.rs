//! Index mappings: explicit ones from index templates and `PUT /{index}`, dynamic ones
//! grown from documents, and the check of every document against them that produces
//! Elasticsearch's per-item `document_parsing_exception`s.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::date::{self, DateFormats, DEFAULT_FORMAT};
use crate::json::{Kind, Node, Pos};

/// Field types the fake accepts in explicit mappings. Types it does not validate values
/// for (geo, vectors, ranges...) accept any value.
const KNOWN_TYPES: &[&str] = &[
    "text",
    "keyword",
    "match_only_text",
    "wildcard",
    "constant_keyword",
    "long",
    "integer",
    "short",
    "byte",
    "unsigned_long",
    "double",
    "float",
    "half_float",
    "scaled_float",
    "boolean",
    "date",
    "date_nanos",
    "ip",
    "flattened",
    "binary",
    "geo_point",
    "geo_shape",
    "point",
    "shape",
    "alias",
    "version",
    "dense_vector",
    "sparse_vector",
    "rank_feature",
    "rank_features",
    "search_as_you_type",
    "completion",
    "token_count",
    "integer_range",
    "long_range",
    "float_range",
    "double_range",
    "date_range",
    "ip_range",
    "semantic_text",
    "histogram",
    "aggregate_metric_double",
    "annotated_text",
    "murmur3",
    "join",
    "percolator",
    "counted_keyword",
    "object",
    "nested",
    "passthrough",
];

/// Fields Elasticsearch reserves; a document may not contain them at its root.
const METADATA_FIELDS: &[&str] = &[
    "_id",
    "_index",
    "_source",
    "_routing",
    "_seq_no",
    "_version",
    "_primary_term",
    "_ignored",
    "_field_names",
    "_doc_count",
    "_tier",
    "_nested_path",
    "_data_stream_timestamp",
    "_ignored_source",
    "_feature",
    "_index_mode",
    "_tsid",
];

/// The `dynamic` setting of an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dynamic {
    True,
    False,
    Strict,
    Runtime,
}

impl Dynamic {
    fn parse(v: &Value) -> Option<Self> {
        match v {
            Value::Bool(true) => Some(Self::True),
            Value::Bool(false) => Some(Self::False),
            Value::String(s) => match s.as_str() {
                "true" => Some(Self::True),
                "false" => Some(Self::False),
                "strict" => Some(Self::Strict),
                "runtime" => Some(Self::Runtime),
                _ => None,
            },
            _ => None,
        }
    }

    fn to_json(self) -> Value {
        match self {
            Self::True => json!(true),
            Self::False => json!(false),
            Self::Strict => json!("strict"),
            Self::Runtime => json!("runtime"),
        }
    }
}

/// An object field (or the root).
#[derive(Clone, Debug, Default)]
pub(crate) struct ObjectMapping {
    pub properties: BTreeMap<String, FieldMapping>,
    pub dynamic: Option<Dynamic>,
    pub nested: bool,
    /// Other parameters as given (`enabled`, `subobjects`...), echoed in `_mapping`.
    pub params: Map<String, Value>,
}

/// A mapped field.
#[derive(Clone, Debug)]
pub(crate) enum FieldMapping {
    Object(ObjectMapping),
    Leaf(LeafMapping),
}

/// A field holding values.
#[derive(Clone, Debug)]
pub(crate) struct LeafMapping {
    pub ty: String,
    /// Parameters besides `type` and `fields`, as given.
    pub params: Map<String, Value>,
    /// Multi-fields (`fields`).
    pub fields: BTreeMap<String, LeafMapping>,
    formats: Option<DateFormats>,
}

impl LeafMapping {
    fn new(ty: &str) -> Self {
        let mut leaf = Self {
            ty: ty.to_string(),
            params: Map::new(),
            fields: BTreeMap::new(),
            formats: None,
        };
        leaf.finish();
        leaf
    }

    fn finish(&mut self) {
        if matches!(self.ty.as_str(), "date" | "date_nanos") {
            let spec = self
                .params
                .get("format")
                .and_then(Value::as_str)
                .unwrap_or(DEFAULT_FORMAT)
                .to_string();
            self.formats = Some(DateFormats::parse(&spec));
        }
    }

    /// The mapping Elasticsearch creates for a string it sees first: `text` with a
    /// `keyword` sub-field.
    fn dynamic_text() -> Self {
        let mut leaf = Self::new("text");
        let mut kw = Self::new("keyword");
        kw.params.insert("ignore_above".into(), json!(256));
        leaf.fields.insert("keyword".into(), kw);
        leaf
    }

    fn total_fields(&self) -> usize {
        1 + self
            .fields
            .values()
            .map(LeafMapping::total_fields)
            .sum::<usize>()
    }

    fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.ty));
        for (k, v) in &self.params {
            m.insert(k.clone(), v.clone());
        }
        if !self.fields.is_empty() {
            m.insert(
                "fields".into(),
                Value::Object(
                    self.fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.to_json()))
                        .collect(),
                ),
            );
        }
        Value::Object(m)
    }
}

impl ObjectMapping {
    fn total_fields(&self) -> usize {
        self.properties
            .values()
            .map(|f| match f {
                FieldMapping::Object(o) => 1 + o.total_fields(),
                FieldMapping::Leaf(l) => l.total_fields(),
            })
            .sum()
    }

    fn to_json(&self, root: bool) -> Value {
        let mut m = Map::new();
        if self.nested {
            m.insert("type".into(), json!("nested"));
        }
        if let Some(d) = self.dynamic {
            m.insert("dynamic".into(), d.to_json());
        }
        for (k, v) in &self.params {
            m.insert(k.clone(), v.clone());
        }
        if !self.properties.is_empty() || (!root && m.is_empty()) {
            m.insert(
                "properties".into(),
                Value::Object(
                    self.properties
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                FieldMapping::Object(o) => o.to_json(false),
                                FieldMapping::Leaf(l) => l.to_json(),
                            };
                            (k.clone(), v)
                        })
                        .collect(),
                ),
            );
        }
        Value::Object(m)
    }
}

/// One entry of `dynamic_templates`.
#[derive(Clone, Debug)]
pub(crate) struct DynamicTemplate {
    name: String,
    match_mapping_type: Vec<String>,
    unmatch_mapping_type: Vec<String>,
    matches: Vec<String>,
    unmatches: Vec<String>,
    path_match: Vec<String>,
    path_unmatch: Vec<String>,
    mapping: Map<String, Value>,
}

impl DynamicTemplate {
    fn applies(&self, match_type: &str, name: &str, path: &str) -> bool {
        let any = |pats: &[String], s: &str| pats.iter().any(|p| glob_match(p, s));
        (self.match_mapping_type.is_empty()
            || self
                .match_mapping_type
                .iter()
                .any(|t| t == "*" || t == match_type))
            && !self.unmatch_mapping_type.iter().any(|t| t == match_type)
            && (self.matches.is_empty() || any(&self.matches, name))
            && !any(&self.unmatches, name)
            && (self.path_match.is_empty() || any(&self.path_match, path))
            && !any(&self.path_unmatch, path)
    }
}

/// The mapping of one index.
#[derive(Clone, Debug)]
pub(crate) struct RootMapping {
    pub root: ObjectMapping,
    pub date_detection: Option<bool>,
    pub numeric_detection: Option<bool>,
    dynamic_templates: Vec<DynamicTemplate>,
    dynamic_templates_raw: Vec<Value>,
    /// Root parameters the fake keeps but does not interpret (`_source`, `_meta`, ...).
    pub params: Map<String, Value>,
}

impl Default for RootMapping {
    fn default() -> Self {
        Self {
            root: ObjectMapping::default(),
            date_detection: None,
            numeric_detection: None,
            dynamic_templates: Vec::new(),
            dynamic_templates_raw: Vec::new(),
            params: Map::new(),
        }
    }
}

impl RootMapping {
    /// The mapping as `GET /{index}/_mapping` shows it (the value of `mappings`).
    pub(crate) fn to_json(&self) -> Value {
        let Value::Object(mut m) = self.root.to_json(true) else {
            return json!({});
        };
        if let Some(d) = self.date_detection {
            m.insert("date_detection".into(), json!(d));
        }
        if let Some(n) = self.numeric_detection {
            m.insert("numeric_detection".into(), json!(n));
        }
        if !self.dynamic_templates_raw.is_empty() {
            m.insert(
                "dynamic_templates".into(),
                Value::Array(self.dynamic_templates_raw.clone()),
            );
        }
        for (k, v) in &self.params {
            m.insert(k.clone(), v.clone());
        }
        Value::Object(m)
    }

    /// Number of fields as `index.mapping.total_fields.limit` counts them.
    pub(crate) fn total_fields(&self) -> usize {
        self.root.total_fields()
    }

    /// Adds `@timestamp: date` if absent (data streams get it from Elasticsearch).
    pub(crate) fn ensure_timestamp(&mut self) {
        self.root
            .properties
            .entry("@timestamp".into())
            .or_insert_with(|| FieldMapping::Leaf(LeafMapping::new("date")));
        self.params
            .insert("_data_stream_timestamp".into(), json!({"enabled": true}));
    }
}

/// Index settings that change how documents are checked.
#[derive(Clone, Debug)]
pub(crate) struct IndexSettings {
    pub total_fields_limit: usize,
    pub ignore_malformed: bool,
    pub ignore_dynamic_beyond_limit: bool,
}

impl IndexSettings {
    /// Defaults, with the field limit the fake was started with.
    pub(crate) fn new(total_fields_limit: usize) -> Self {
        Self {
            total_fields_limit,
            ignore_malformed: false,
            ignore_dynamic_beyond_limit: false,
        }
    }

    /// Applies `settings` (nested or dotted, with or without the `index.` prefix).
    pub(crate) fn apply(&mut self, settings: &Value) {
        let mut flat = Vec::new();
        flatten("", settings, &mut flat);
        for (key, value) in flat {
            let key = key.strip_prefix("index.").unwrap_or(&key);
            let as_bool = || match &value {
                Value::Bool(b) => Some(*b),
                Value::String(s) => s.parse().ok(),
                _ => None,
            };
            match key {
                "mapping.total_fields.limit" => {
                    let limit = match &value {
                        Value::Number(n) => n.as_u64(),
                        Value::String(s) => s.parse().ok(),
                        _ => None,
                    };
                    if let Some(limit) = limit {
                        self.total_fields_limit = limit as usize;
                    }
                }
                "mapping.ignore_malformed" => {
                    if let Some(b) = as_bool() {
                        self.ignore_malformed = b;
                    }
                }
                "mapping.total_fields.ignore_dynamic_beyond_limit" => {
                    if let Some(b) = as_bool() {
                        self.ignore_dynamic_beyond_limit = b;
                    }
                }
                _ => {}
            }
        }
    }
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// Parses the `mappings` of a template or of `PUT /{index}`; the error is the reason of
/// Elasticsearch's `mapper_parsing_exception`.
pub(crate) fn parse_root(v: &Value) -> Result<RootMapping, String> {
    let Value::Object(m) = v else {
        return Err(format!(
            "Expected map for property [mappings] but got {}",
            java_class(v)
        ));
    };
    let mut root = RootMapping::default();
    let mut unsupported = Vec::new();
    for (k, v) in m {
        match k.as_str() {
            "properties" => root.root.properties = parse_properties(v, "")?,
            "dynamic" => {
                root.root.dynamic = Some(Dynamic::parse(v).ok_or_else(|| {
                    format!("Could not convert [dynamic.dynamic] to boolean: {v}")
                })?)
            }
            "date_detection" => root.date_detection = v.as_bool(),
            "numeric_detection" => root.numeric_detection = v.as_bool(),
            "dynamic_templates" => {
                let Value::Array(items) = v else {
                    return Err(
                        "Dynamic template syntax error. An array of named objects is expected."
                            .into(),
                    );
                };
                for item in items {
                    root.dynamic_templates.push(parse_dynamic_template(item)?);
                    root.dynamic_templates_raw.push(item.clone());
                }
            }
            "subobjects" | "enabled" => {
                root.root.params.insert(k.clone(), v.clone());
            }
            "_source"
            | "_meta"
            | "_routing"
            | "runtime"
            | "_data_stream_timestamp"
            | "_field_names"
            | "dynamic_date_formats"
            | "_size"
            | "_doc_count" => {
                root.params.insert(k.clone(), v.clone());
            }
            _ => unsupported.push(format!("{k} : {v}")),
        }
    }
    if !unsupported.is_empty() {
        return Err(format!(
            "Root mapping definition has unsupported parameters:  [{}]",
            unsupported.join("] [")
        ));
    }
    Ok(root)
}

fn java_class(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a class java.lang.String",
        Value::Bool(_) => "a class java.lang.Boolean",
        Value::Number(n) if n.is_f64() => "a class java.lang.Double",
        Value::Number(_) => "a class java.lang.Integer",
        Value::Array(_) => "a class java.util.ArrayList",
        Value::Null => "null",
        Value::Object(_) => "a class java.util.LinkedHashMap",
    }
}

fn parse_dynamic_template(item: &Value) -> Result<DynamicTemplate, String> {
    let err =
        || "Dynamic template syntax error. An array of named objects is expected.".to_string();
    let Value::Object(outer) = item else {
        return Err(err());
    };
    let mut iter = outer.iter();
    let (Some((name, Value::Object(def))), None) = (iter.next(), iter.next()) else {
        return Err(err());
    };
    let list = |key: &str| -> Vec<String> {
        match def.get(key) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    };
    let Some(Value::Object(mapping)) = def.get("mapping") else {
        return Err(format!(
            "template [{name}] must have either mapping or runtime set"
        ));
    };
    Ok(DynamicTemplate {
        name: name.clone(),
        match_mapping_type: list("match_mapping_type"),
        unmatch_mapping_type: list("unmatch_mapping_type"),
        matches: list("match"),
        unmatches: list("unmatch"),
        path_match: list("path_match"),
        path_unmatch: list("path_unmatch"),
        mapping: mapping.clone(),
    })
}

fn parse_properties(v: &Value, parent: &str) -> Result<BTreeMap<String, FieldMapping>, String> {
    let Value::Object(m) = v else {
        return Err(format!(
            "Expected map for property [properties] on field [{}] but got {}",
            if parent.is_empty() { "_doc" } else { parent },
            java_class(v)
        ));
    };
    let mut out: BTreeMap<String, FieldMapping> = BTreeMap::new();
    for (name, def) in m {
        // `"a.b": {...}` in a mapping means `a: {properties: {b: {...}}}`.
        let mut parts: Vec<&str> = name.split('.').collect();
        let leaf_name = parts.pop().unwrap_or_default();
        let mut target = &mut out;
        let mut path = parent.to_string();
        for part in parts {
            path = join(&path, part);
            let entry = target
                .entry(part.to_string())
                .or_insert_with(|| FieldMapping::Object(ObjectMapping::default()));
            if let FieldMapping::Leaf(_) = entry {
                *entry = FieldMapping::Object(ObjectMapping::default());
            }
            let FieldMapping::Object(o) = entry else {
                return Err(format!("could not expand mapping of [{name}]"));
            };
            target = &mut o.properties;
        }
        let full = join(&path, leaf_name);
        target.insert(leaf_name.to_string(), parse_field(&full, def)?);
    }
    Ok(out)
}

fn parse_field(name: &str, def: &Value) -> Result<FieldMapping, String> {
    let Value::Object(m) = def else {
        return Err(format!(
            "Expected map for property [fields] on field [{name}] but got {}",
            java_class(def)
        ));
    };
    let ty = match m.get("type") {
        None => None,
        Some(Value::String(t)) => Some(t.as_str()),
        Some(other) => {
            return Err(format!(
                "No handler for type [{}] declared on field [{name}]",
                other.to_string().trim_matches('"')
            ))
        }
    };
    match ty {
        None | Some("object") | Some("nested") => {
            let mut o = ObjectMapping {
                nested: ty == Some("nested"),
                ..ObjectMapping::default()
            };
            for (k, v) in m {
                match k.as_str() {
                    "type" => {}
                    "properties" => o.properties = parse_properties(v, name)?,
                    "dynamic" => {
                        o.dynamic = Some(Dynamic::parse(v).ok_or_else(|| {
                            format!("Could not convert [{name}.dynamic] to boolean")
                        })?)
                    }
                    _ => {
                        o.params.insert(k.clone(), v.clone());
                    }
                }
            }
            Ok(FieldMapping::Object(o))
        }
        Some(t) => Ok(FieldMapping::Leaf(parse_leaf(name, t, m)?)),
    }
}

fn parse_leaf(name: &str, ty: &str, m: &Map<String, Value>) -> Result<LeafMapping, String> {
    if !KNOWN_TYPES.contains(&ty) {
        return Err(format!(
            "No handler for type [{ty}] declared on field [{name}]"
        ));
    }
    let mut leaf = LeafMapping {
        ty: ty.to_string(),
        params: Map::new(),
        fields: BTreeMap::new(),
        formats: None,
    };
    for (k, v) in m {
        match k.as_str() {
            "type" => {}
            "fields" => {
                let Value::Object(subs) = v else {
                    return Err(format!(
                        "Expected map for property [fields] on field [{name}] but got {}",
                        java_class(v)
                    ));
                };
                for (sub, def) in subs {
                    let full = format!("{name}.{sub}");
                    let Value::Object(sm) = def else {
                        return Err(format!(
                            "Expected map for property [fields] on field [{full}] but got {}",
                            java_class(def)
                        ));
                    };
                    let sty = sm.get("type").and_then(Value::as_str).unwrap_or("object");
                    if matches!(sty, "object" | "nested") {
                        return Err(format!("Type [{sty}] cannot be used in multi field"));
                    }
                    leaf.fields.insert(sub.clone(), parse_leaf(&full, sty, sm)?);
                }
            }
            _ => {
                leaf.params.insert(k.clone(), v.clone());
            }
        }
    }
    leaf.finish();
    Ok(leaf)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}.{name}")
    }
}

/// Elasticsearch's `Regex.simpleMatch`: `*` matches any run of characters.
pub(crate) fn glob_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = s.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether some string matches both glob patterns (template overlap check).
pub(crate) fn globs_overlap(a: &str, b: &str) -> bool {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    fn go(a: &[char], b: &[char], i: usize, j: usize, memo: &mut Vec<Vec<Option<bool>>>) -> bool {
        if let Some(r) = memo[i][j] {
            return r;
        }
        let r = if i == a.len() && j == b.len() {
            true
        } else if i < a.len() && a[i] == '*' {
            go(a, b, i + 1, j, memo) || (j < b.len() && go(a, b, i, j + 1, memo))
        } else if j < b.len() && b[j] == '*' {
            go(a, b, i, j + 1, memo) || (i < a.len() && go(a, b, i + 1, j, memo))
        } else if i < a.len() && j < b.len() && a[i] == b[j] {
            go(a, b, i + 1, j + 1, memo)
        } else {
            false
        };
        memo[i][j] = Some(r);
        r
    }
    go(&a, &b, 0, 0, &mut memo)
}

/// Why a document was refused, as a bulk item error.
#[derive(Clone, Debug)]
pub(crate) struct DocError {
    pub error_type: &'static str,
    pub reason: String,
    pub caused_by: Option<(String, String)>,
}

fn doc_error(pos: Pos, message: String) -> DocError {
    DocError {
        error_type: "document_parsing_exception",
        reason: format!("{pos} {message}"),
        caused_by: None,
    }
}

struct Ctx<'a> {
    id: &'a str,
    settings: &'a IndexSettings,
    date_detection: bool,
    numeric_detection: bool,
    templates: Vec<DynamicTemplate>,
    field_count: usize,
    /// Checking only: the first change the document would make to the mapping ends the
    /// walk with [`needs_update`] instead.
    dry: bool,
}

/// Ends a dry walk where the document would change the mapping.
const NEEDS_UPDATE: &str = "weir_testkit_mapping_update_needed";

fn needs_update() -> DocError {
    DocError {
        error_type: NEEDS_UPDATE,
        reason: String::new(),
        caused_by: None,
    }
}

/// Checks `source` against `mapping`, as Elasticsearch's `DocumentParser` does. `Ok(None)`:
/// the document fits the mapping as it is. `Ok(Some(updated))`: it fits once the dynamic
/// fields it introduces (or a `constant_keyword`'s first value) are added; the caller
/// stores `updated` once the document is accepted. `mapping` itself is never changed, as
/// Elasticsearch applies no mapping update for a refused document.
///
/// Most documents of a stream add nothing, so the document is first walked against the
/// mapping without a copy; only when that walk reaches a change is the walk done again on
/// a copy. Both walks visit the fields in the same order, so they refuse a document with
/// the same error.
pub(crate) fn parse_document(
    mapping: &mut RootMapping,
    settings: &IndexSettings,
    id: &str,
    source: &Node,
) -> Result<Option<RootMapping>, DocError> {
    match walk_document(mapping, settings, id, source, true) {
        Err(e) if e.error_type == NEEDS_UPDATE => {
            let mut work = mapping.clone();
            walk_document(&mut work, settings, id, source, false)?;
            Ok(Some(work))
        }
        other => other.map(|()| None),
    }
}

/// With `dry`, `mapping` is left untouched (the walk stops at the first change); without,
/// it is grown, also partially when the document is refused.
fn walk_document(
    mapping: &mut RootMapping,
    settings: &IndexSettings,
    id: &str,
    source: &Node,
    dry: bool,
) -> Result<(), DocError> {
    let Kind::Obj(members) = &source.kind else {
        return Err(doc_error(
            source.start,
            "Malformed content, must start with an object".into(),
        ));
    };
    let mut ctx = Ctx {
        id,
        settings,
        date_detection: mapping.date_detection.unwrap_or(true),
        numeric_detection: mapping.numeric_detection.unwrap_or(false),
        // Only a change needs these.
        templates: if dry {
            Vec::new()
        } else {
            mapping.dynamic_templates.clone()
        },
        field_count: if dry { 0 } else { mapping.total_fields() },
        dry,
    };
    let dynamic = mapping.root.dynamic.unwrap_or(Dynamic::True);
    parse_object(&mut ctx, &mut mapping.root, "", members, dynamic)
}

fn check_field_name(name: &str, pos: Pos) -> Result<(), DocError> {
    if name.is_empty() {
        return Err(doc_error(
            pos,
            "field name cannot be an empty string".into(),
        ));
    }
    if name.trim().is_empty() {
        return Err(doc_error(
            pos,
            format!("field name cannot contain only whitespace: ['{name}']"),
        ));
    }
    if name.split('.').any(str::is_empty) {
        return Err(doc_error(
            pos,
            format!(
                "object field starting or ending with a [.] makes object resolution ambiguous: [{name}]"
            ),
        ));
    }
    Ok(())
}

fn parse_object(
    ctx: &mut Ctx<'_>,
    object: &mut ObjectMapping,
    path: &str,
    members: &[(String, Node)],
    dynamic: Dynamic,
) -> Result<(), DocError> {
    if object.params.get("enabled") == Some(&Value::Bool(false)) {
        return Ok(());
    }
    'members: for (name, value) in members {
        check_field_name(name, value.start)?;
        let full_name = join(path, name);
        if path.is_empty() && METADATA_FIELDS.contains(&name.as_str()) {
            return Err(doc_error(
                value.start,
                format!(
                    "Field [{name}] is a metadata field and cannot be added inside a document. Use the index API request parameters."
                ),
            ));
        }
        // Dots in a field name are object boundaries: walk (or grow) the objects.
        let mut segments: Vec<&str> = name.split('.').collect();
        let leaf = segments.pop().unwrap_or_default();
        let mut current: &mut ObjectMapping = object;
        let mut current_path = path.to_string();
        let mut current_dynamic = dynamic;
        for seg in segments {
            let seg_path = join(&current_path, seg);
            if !current.properties.contains_key(seg) {
                match current_dynamic {
                    Dynamic::Strict => return Err(strict_error(value.start, seg, &current_path)),
                    Dynamic::False | Dynamic::Runtime => continue 'members,
                    Dynamic::True => {
                        if ctx.dry {
                            return Err(needs_update());
                        }
                        if !add_fields(ctx, 1, value.start)? {
                            continue 'members;
                        }
                        current.properties.insert(
                            seg.to_string(),
                            FieldMapping::Object(ObjectMapping::default()),
                        );
                    }
                }
            }
            match current.properties.get_mut(seg) {
                Some(FieldMapping::Object(o)) => {
                    current_dynamic = o.dynamic.unwrap_or(current_dynamic);
                    current = o;
                }
                Some(FieldMapping::Leaf(l)) => {
                    return Err(doc_error(
                        value.start,
                        format!(
                            "Could not dynamically add mapping for field [{full_name}]. Existing mapping for [{seg_path}] must be of type object but found [{}].",
                            l.ty
                        ),
                    ));
                }
                None => continue 'members,
            }
            current_path = seg_path;
        }
        parse_value(ctx, current, &current_path, leaf, value, current_dynamic)?;
    }
    Ok(())
}

fn strict_error(pos: Pos, name: &str, parent: &str) -> DocError {
    DocError {
        error_type: "strict_dynamic_mapping_exception",
        reason: format!(
            "{pos} mapping set to strict, dynamic introduction of [{name}] within [{}] is not allowed",
            if parent.is_empty() { "_doc" } else { parent }
        ),
        caused_by: None,
    }
}

/// Accounts for `n` new fields; `Ok(false)` if they must be skipped
/// (`ignore_dynamic_beyond_limit`).
fn add_fields(ctx: &mut Ctx<'_>, n: usize, pos: Pos) -> Result<bool, DocError> {
    if ctx.field_count + n > ctx.settings.total_fields_limit {
        if ctx.settings.ignore_dynamic_beyond_limit {
            return Ok(false);
        }
        return Err(doc_error(
            pos,
            format!(
                "failed to parse: Limit of total fields [{}] has been exceeded while adding new fields [{n}]",
                ctx.settings.total_fields_limit
            ),
        ));
    }
    ctx.field_count += n;
    Ok(true)
}

fn parse_value(
    ctx: &mut Ctx<'_>,
    parent: &mut ObjectMapping,
    parent_path: &str,
    name: &str,
    node: &Node,
    dynamic: Dynamic,
) -> Result<(), DocError> {
    let full = join(parent_path, name);
    match &node.kind {
        Kind::Null => return Ok(()),
        Kind::Arr(items) => {
            for item in items {
                parse_value(ctx, parent, parent_path, name, item, dynamic)?;
            }
            return Ok(());
        }
        _ => {}
    }
    if !parent.properties.contains_key(name) {
        match dynamic {
            Dynamic::Strict => return Err(strict_error(node.start, name, parent_path)),
            Dynamic::False | Dynamic::Runtime => return Ok(()),
            Dynamic::True => {
                if ctx.dry {
                    return Err(needs_update());
                }
                let Some(field) = dynamic_field(ctx, name, &full, node) else {
                    return Ok(());
                };
                let cost = match &field {
                    FieldMapping::Object(_) => 1,
                    FieldMapping::Leaf(l) => l.total_fields(),
                };
                if !add_fields(ctx, cost, node.start)? {
                    return Ok(());
                }
                parent.properties.insert(name.to_string(), field);
            }
        }
    }
    match parent.properties.get_mut(name) {
        Some(FieldMapping::Object(o)) => match &node.kind {
            Kind::Obj(members) => {
                let d = o.dynamic.unwrap_or(dynamic);
                parse_object(ctx, o, &full, members, d)
            }
            _ => {
                if o.params.get("enabled") == Some(&Value::Bool(false)) {
                    return Ok(());
                }
                Err(doc_error(
                    node.start,
                    format!(
                        "object mapping for [{full}] tried to parse field [{name}] as object, but found a concrete value"
                    ),
                ))
            }
        },
        Some(FieldMapping::Leaf(leaf)) => check_leaf(ctx, leaf, &full, node),
        None => Ok(()),
    }
}

/// The mapping Elasticsearch adds for a field it has not seen, from the dynamic templates
/// or its defaults.
fn dynamic_field(ctx: &Ctx<'_>, name: &str, path: &str, node: &Node) -> Option<FieldMapping> {
    let (match_type, default): (&str, FieldMapping) = match &node.kind {
        Kind::Str(s) => {
            if let Some(format) = ctx.date_detection.then(|| date::detect(s)).flatten() {
                let mut leaf = LeafMapping::new("date");
                if let Some(f) = format {
                    leaf.params.insert("format".into(), json!(f));
                    leaf.finish();
                }
                ("date", FieldMapping::Leaf(leaf))
            } else if ctx.numeric_detection && s.trim().parse::<i64>().is_ok() {
                ("long", FieldMapping::Leaf(LeafMapping::new("long")))
            } else if ctx.numeric_detection && s.trim().parse::<f64>().is_ok() {
                ("double", FieldMapping::Leaf(LeafMapping::new("float")))
            } else {
                ("string", FieldMapping::Leaf(LeafMapping::dynamic_text()))
            }
        }
        Kind::Num(_) if node.is_integer() => ("long", FieldMapping::Leaf(LeafMapping::new("long"))),
        Kind::Num(_) => ("double", FieldMapping::Leaf(LeafMapping::new("float"))),
        Kind::Bool(_) => ("boolean", FieldMapping::Leaf(LeafMapping::new("boolean"))),
        Kind::Obj(_) => ("object", FieldMapping::Object(ObjectMapping::default())),
        Kind::Null | Kind::Arr(_) => return None,
    };
    let Some(template) = ctx
        .templates
        .iter()
        .find(|t| t.applies(match_type, name, path))
    else {
        return Some(default);
    };
    let default_type = match match_type {
        "string" => "text",
        "double" => "float",
        other => other,
    };
    let mut mapping = Value::Object(template.mapping.clone());
    substitute(&mut mapping, name, default_type);
    if let Value::Object(m) = &mut mapping {
        if !m.contains_key("type") && match_type != "object" {
            m.insert("type".into(), json!(default_type));
        }
    }
    match parse_field(path, &mapping) {
        Ok(field) => Some(field),
        Err(e) => {
            tracing::warn!(template = %template.name, error = %e, "dynamic template does not parse; using the default mapping");
            Some(default)
        }
    }
}

fn substitute(v: &mut Value, name: &str, dynamic_type: &str) {
    match v {
        Value::String(s) => {
            *s = s
                .replace("{name}", name)
                .replace("{dynamic_type}", dynamic_type);
        }
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, name, dynamic_type)),
        Value::Object(m) => m
            .values_mut()
            .for_each(|x| substitute(x, name, dynamic_type)),
        _ => {}
    }
}

/// Why a value does not fit a leaf type: the `caused_by` of the item error.
type Mismatch = Option<(String, String)>;

fn illegal(reason: String) -> Mismatch {
    Some(("illegal_argument_exception".into(), reason))
}

fn check_leaf(
    ctx: &mut Ctx<'_>,
    leaf: &mut LeafMapping,
    full: &str,
    node: &Node,
) -> Result<(), DocError> {
    if ctx.dry
        && leaf.ty == "constant_keyword"
        && leaf.params.get("value").and_then(Value::as_str).is_none()
        && scalar_text(node).is_some()
    {
        // The first value sets the field's constant.
        return Err(needs_update());
    }
    let result: Result<(), Mismatch> = match leaf.ty.as_str() {
        "text" | "keyword" | "match_only_text" | "wildcard" | "search_as_you_type"
        | "annotated_text" | "version" | "counted_keyword" => match node.kind {
            Kind::Obj(_) => Err(None),
            _ => Ok(()),
        },
        "constant_keyword" => check_constant(leaf, full, node),
        "long" => check_integer(node, i128::from(i64::MIN), i128::from(i64::MAX), "long"),
        "integer" => check_integer(node, i128::from(i32::MIN), i128::from(i32::MAX), "integer"),
        "short" => check_integer(node, i128::from(i16::MIN), i128::from(i16::MAX), "short"),
        "byte" => check_integer(node, i128::from(i8::MIN), i128::from(i8::MAX), "byte"),
        "unsigned_long" => check_integer(node, 0, i128::from(u64::MAX), "unsigned_long"),
        "double" | "float" | "half_float" | "scaled_float" => check_float(node, &leaf.ty),
        "boolean" => check_bool(node),
        "date" | "date_nanos" => check_date(leaf, node),
        "ip" => match &node.kind {
            Kind::Str(s) if s.parse::<std::net::IpAddr>().is_ok() => Ok(()),
            Kind::Str(s) => Err(illegal(format!("'{s}' is not an IP string literal."))),
            _ => Err(None),
        },
        _ => Ok(()),
    };
    if let Err(caused_by) = result {
        let malformed_ok = matches!(
            leaf.ty.as_str(),
            "long"
                | "integer"
                | "short"
                | "byte"
                | "unsigned_long"
                | "double"
                | "float"
                | "half_float"
                | "scaled_float"
                | "boolean"
                | "date"
                | "date_nanos"
                | "ip"
        ) && leaf
            .params
            .get("ignore_malformed")
            .and_then(Value::as_bool)
            .unwrap_or(ctx.settings.ignore_malformed);
        if !malformed_ok {
            let pos = match node.kind {
                Kind::Obj(_) | Kind::Arr(_) => node.end,
                _ => node.start,
            };
            let mut err = doc_error(
                pos,
                format!(
                    "failed to parse field [{full}] of type [{}] in document with id '{}'. Preview of field's value: '{}'",
                    leaf.ty,
                    ctx.id,
                    node.java_preview()
                ),
            );
            err.caused_by = caused_by;
            return Err(err);
        }
        return Ok(());
    }
    for (sub, sub_leaf) in leaf.fields.iter_mut() {
        let sub_full = format!("{full}.{sub}");
        check_leaf(ctx, sub_leaf, &sub_full, node)?;
    }
    Ok(())
}

fn scalar_text(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::Str(s) => Some(s.clone()),
        Kind::Num(raw) => Some(raw.clone()),
        Kind::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn check_constant(leaf: &mut LeafMapping, full: &str, node: &Node) -> Result<(), Mismatch> {
    let Some(value) = scalar_text(node) else {
        return Err(None);
    };
    match leaf.params.get("value").and_then(Value::as_str) {
        None => {
            leaf.params.insert("value".into(), json!(value));
            Ok(())
        }
        Some(existing) if existing == value => Ok(()),
        Some(existing) => Err(illegal(format!(
            "[constant_keyword] field [{full}] only accepts values that are equal to the value defined in the mappings [{existing}], but got [{value}]"
        ))),
    }
}

/// The text of a value given to a numeric field: a number or a string (coerced, as
/// Elasticsearch does); a boolean is refused the way Jackson refuses it.
fn numeric_text(node: &Node) -> Result<String, Mismatch> {
    match &node.kind {
        Kind::Num(raw) => Ok(raw.clone()),
        Kind::Str(s) => Ok(s.trim().to_string()),
        Kind::Bool(b) => Err(illegal(format!(
            "Current token (VALUE_{}) not numeric, can not use numeric value accessors",
            if *b { "TRUE" } else { "FALSE" }
        ))),
        _ => Err(None),
    }
}

fn check_integer(node: &Node, min: i128, max: i128, ty: &str) -> Result<(), Mismatch> {
    let text = numeric_text(node)?;
    let value = match text.parse::<i128>() {
        Ok(v) => Some(v),
        // Coercion: Elasticsearch truncates decimals for integer types.
        Err(_) => match text.parse::<f64>() {
            Ok(f) if f.is_finite() && f.abs() < 1e38 => Some(f.trunc() as i128),
            Ok(_) => None,
            Err(_) => {
                return Err(illegal(format!("For input string: \"{text}\"")));
            }
        },
    };
    match value {
        Some(v) if v >= min && v <= max => Ok(()),
        _ => Err(illegal(format!(
            "Value [{text}] is out of range for {} {ty}",
            article(ty)
        ))),
    }
}

fn article(ty: &str) -> &'static str {
    if ty.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

fn check_float(node: &Node, ty: &str) -> Result<(), Mismatch> {
    let text = numeric_text(node)?;
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(()),
        Ok(_) => Err(illegal(format!(
            "[{ty}] supports only finite values, but got [{text}]"
        ))),
        Err(_) => Err(illegal(format!("For input string: \"{text}\""))),
    }
}

fn check_bool(node: &Node) -> Result<(), Mismatch> {
    match &node.kind {
        Kind::Bool(_) => Ok(()),
        Kind::Str(s) if s == "true" || s == "false" || s.is_empty() => Ok(()),
        Kind::Str(s) => Err(illegal(format!(
            "Failed to parse value [{s}] as only [true] or [false] are allowed."
        ))),
        Kind::Num(raw) => Err(illegal(format!(
            "Failed to parse value [{raw}] as only [true] or [false] are allowed."
        ))),
        _ => Err(None),
    }
}

fn check_date(leaf: &LeafMapping, node: &Node) -> Result<(), Mismatch> {
    let default = DateFormats::parse(DEFAULT_FORMAT);
    let formats = leaf.formats.as_ref().unwrap_or(&default);
    let ok = match &node.kind {
        Kind::Str(s) => formats.accepts_str(s),
        Kind::Num(raw) => formats.accepts_number(raw),
        Kind::Bool(_) => false,
        _ => return Err(None),
    };
    if ok {
        return Ok(());
    }
    let value = scalar_text(node).unwrap_or_default();
    Err(illegal(format!(
        "failed to parse date field [{value}] with format [{}]",
        formats.spec()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::parse;

    fn doc(mapping: &mut RootMapping, src: &str) -> Result<(), DocError> {
        let node = parse(src).unwrap_or_else(|e| panic!("{e:?}"));
        let settings = IndexSettings::new(1000);
        if let Some(updated) = parse_document(mapping, &settings, "X", &node)? {
            *mapping = updated;
        }
        Ok(())
    }

    #[test]
    fn dynamic_mapping_types() {
        let mut m = RootMapping::default();
        doc(
            &mut m,
            r#"{"s":"x","d":"2026-11-21T19:00:00Z","i":1,"f":1.5,"b":true,"o":{"n":1},"a.b":2}"#,
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let j = m.to_json();
        assert_eq!(j["properties"]["s"]["type"], "text");
        assert_eq!(j["properties"]["s"]["fields"]["keyword"]["type"], "keyword");
        assert_eq!(j["properties"]["d"]["type"], "date");
        assert_eq!(j["properties"]["i"]["type"], "long");
        assert_eq!(j["properties"]["f"]["type"], "float");
        assert_eq!(j["properties"]["b"]["type"], "boolean");
        assert_eq!(j["properties"]["o"]["properties"]["n"]["type"], "long");
        assert_eq!(j["properties"]["a"]["properties"]["b"]["type"], "long");
    }

    #[test]
    fn conflicts_are_refused_with_elasticsearch_reasons() {
        let mut m = RootMapping::default();
        doc(&mut m, r#"{"attributes":{"a":"x"}}"#).unwrap_or_else(|e| panic!("{e:?}"));
        let e = doc(&mut m, r#"{"attributes":{"a.b":1}}"#).unwrap_err();
        assert_eq!(
            e.reason,
            "[1:22] Could not dynamically add mapping for field [attributes.a.b]. Existing mapping for [attributes.a] must be of type object but found [text]."
        );
        let e = doc(&mut m, r#"{"attributes":{"a":{"b":1}}}"#).unwrap_err();
        assert_eq!(
            e.reason,
            "[1:26] failed to parse field [attributes.a] of type [text] in document with id 'X'. Preview of field's value: '{b=1}'"
        );
        let e = doc(&mut m, r#"{"attributes":"flat"}"#).unwrap_err();
        assert!(e.reason.contains("object mapping for [attributes] tried to parse field [attributes] as object, but found a concrete value"));
        doc(&mut m, r#"{"n":5}"#).unwrap_or_else(|e| panic!("{e:?}"));
        let e = doc(&mut m, r#"{"n":"five"}"#).unwrap_err();
        assert!(e.reason.ends_with("failed to parse field [n] of type [long] in document with id 'X'. Preview of field's value: 'five'"));
        doc(&mut m, r#"{"n":"6"}"#).unwrap_or_else(|e| panic!("{e:?}"));
        let e = doc(&mut m, r#"{"_id":"1"}"#).unwrap_err();
        assert!(e.reason.contains("is a metadata field"));
    }

    /// The dry walk is an optimisation only: documents that add fields, refused ones that
    /// grew the mapping before their error, a `constant_keyword`'s first value, strict
    /// objects and the field limit give the same answer and the same mapping as walking a
    /// copy every time (the code before the dry walk).
    #[test]
    fn a_dry_walk_then_a_copy_answers_as_walking_a_copy_every_time() {
        let root = json!({"properties":{
            "k":{"type":"constant_keyword"},
            "n":{"type":"long"},
            "s":{"type":"object","dynamic":"strict","properties":{"a":{"type":"keyword"}}}
        }});
        let docs = [
            r#"{"n":1}"#,
            r#"{"new1":"x","n":"five"}"#,
            r#"{"new1":"x","n":2}"#,
            r#"{"new1":"again","n":3}"#,
            r#"{"k":"first"}"#,
            r#"{"k":"first","n":4}"#,
            r#"{"k":"second"}"#,
            r#"{"s":{"a":"x"}}"#,
            r#"{"s":{"b":"x"}}"#,
            r#"{"o":{"p":{"q":1}},"z.y":true}"#,
            r#"{"o":{"p":{"q":"text"}}}"#,
            r#"{"f1":1,"f2":2,"f3":3,"f4":4}"#,
            r#"{"f5":1}"#,
            r#"{"arr":[1,2,null],"nul":null}"#,
        ];
        for limit in [1000, 12] {
            let settings = IndexSettings::new(limit);
            let mut copying = parse_root(&root).unwrap_or_else(|e| panic!("{e}"));
            let mut dry = copying.clone();
            for src in docs {
                let node = parse(src).unwrap_or_else(|e| panic!("{e:?}"));
                let mut work = copying.clone();
                let want = walk_document(&mut work, &settings, "X", &node, false);
                if want.is_ok() {
                    copying = work;
                }
                let got = parse_document(&mut dry, &settings, "X", &node).map(|updated| {
                    if let Some(m) = updated {
                        dry = m;
                    }
                });
                assert_eq!(
                    format!("{got:?}"),
                    format!("{want:?}"),
                    "answer to {src} (field limit {limit})"
                );
                assert_eq!(
                    dry.to_json(),
                    copying.to_json(),
                    "mapping after {src} (field limit {limit})"
                );
            }
        }
    }

    #[test]
    fn templates_and_strict() {
        let v =
            json!({"dynamic":"strict","properties":{"ts":{"type":"date"},"k":{"type":"keyword"}}});
        let mut m = parse_root(&v).unwrap_or_else(|e| panic!("{e}"));
        doc(&mut m, r#"{"ts":"2026-01-01","k":"x"}"#).unwrap_or_else(|e| panic!("{e:?}"));
        assert!(doc(&mut m, r#"{"ts":"yesterday"}"#).is_err());
        assert!(doc(&mut m, r#"{"k":{"a":1}}"#).is_err());
        let e = doc(&mut m, r#"{"other":1}"#).unwrap_err();
        assert_eq!(e.error_type, "strict_dynamic_mapping_exception");
        assert!(parse_root(&json!({"properties":{"x":{"type":"nope"}}})).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob_match("logs-*-*", "logs-weir-default"));
        assert!(!glob_match("logs-*-*", "logs-weir"));
        assert!(globs_overlap("logs-*", "*-default"));
        assert!(!globs_overlap("a*", "b*"));
    }
}
