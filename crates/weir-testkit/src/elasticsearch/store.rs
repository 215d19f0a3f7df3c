//! The fake cluster's state: indices and their documents, data streams, index templates.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::mapping::{self, IndexSettings, RootMapping};
use super::out::{obj, EsError, Out};
use crate::util;

/// A stored document.
#[derive(Clone, Debug)]
pub(crate) struct StoredDoc {
    pub source: Value,
    pub version: u64,
    pub seq_no: i64,
    /// Global insertion order (for `docs()`).
    pub order: u64,
}

/// One index (shard 0 of it, the only one).
#[derive(Clone, Debug)]
pub(crate) struct Index {
    pub uuid: String,
    pub mapping: RootMapping,
    pub settings: IndexSettings,
    pub docs: HashMap<String, StoredDoc>,
    /// Versions of deleted documents (Elasticsearch keeps them for `gc_deletes`, 60 s;
    /// the fake keeps them for ever).
    pub tombstones: HashMap<String, u64>,
    pub next_seq_no: i64,
    pub data_stream: Option<String>,
}

impl Index {
    fn new(mapping: RootMapping, settings: IndexSettings, data_stream: Option<String>) -> Self {
        Self {
            uuid: util::random_id(22),
            mapping,
            settings,
            docs: HashMap::new(),
            tombstones: HashMap::new(),
            next_seq_no: 0,
            data_stream,
        }
    }

    /// Takes the next sequence number.
    pub(crate) fn take_seq_no(&mut self) -> i64 {
        let s = self.next_seq_no;
        self.next_seq_no += 1;
        s
    }
}

/// A composable index template.
#[derive(Clone, Debug)]
pub(crate) struct Template {
    /// The body as it was put.
    pub body: Value,
    pub patterns: Vec<String>,
    pub priority: i64,
    pub data_stream: bool,
    pub mapping: RootMapping,
    pub settings: Option<Value>,
    /// Installed by the fake itself (Elasticsearch's built-in `logs` template).
    pub builtin: bool,
}

/// Everything the fake cluster holds.
#[derive(Debug)]
pub(crate) struct Store {
    pub indices: BTreeMap<String, Index>,
    /// Data stream name -> its (single) backing index.
    pub data_streams: BTreeMap<String, String>,
    pub templates: BTreeMap<String, Template>,
    next_order: u64,
    total_fields_limit: usize,
    /// See `EsOptions::keep_sources`.
    pub keep_sources: bool,
}

/// Java's `Set.toString()` of Elasticsearch's `Strings.INVALID_FILENAME_CHARS` as it
/// appears in its messages.
const INVALID_CHARS_TEXT: &str = r#"[ , ", *, \, <, |, ,, >, /, ?]"#;

/// Elasticsearch's index name rules; the error is the reason of
/// `invalid_index_name_exception`.
pub(crate) fn validate_index_name(name: &str) -> Result<(), String> {
    let invalid = |why: &str| Err(format!("Invalid index name [{name}], {why}"));
    if name.contains(['\\', '/', '*', '?', '"', '<', '>', '|', ' ', ',']) {
        return invalid(&format!(
            "must not contain the following characters {INVALID_CHARS_TEXT}"
        ));
    }
    if name.is_empty() {
        return invalid("must not be empty");
    }
    if name.contains('#') {
        return invalid("must not contain '#'");
    }
    if name.contains(':') {
        return invalid("must not contain ':'");
    }
    if name.starts_with(['_', '-', '+']) {
        return invalid("must not start with '_', '-', or '+'");
    }
    if name.len() > 255 {
        return invalid(&format!("index name is too long, ({} > 255)", name.len()));
    }
    if name == "." || name == ".." {
        return invalid("must not be '.' or '..'");
    }
    if name.to_lowercase() != name {
        return invalid("must be lowercase");
    }
    Ok(())
}

/// Where a write goes.
pub(crate) struct Target {
    /// The concrete index (a data stream's backing index).
    pub index: String,
    /// The data stream written to, if any.
    pub data_stream: Option<String>,
}

impl Store {
    /// An empty cluster; `builtin_logs_template` installs Elasticsearch's `logs` template.
    pub(crate) fn new(total_fields_limit: usize, builtin_logs_template: bool) -> Self {
        let mut store = Self {
            indices: BTreeMap::new(),
            data_streams: BTreeMap::new(),
            templates: BTreeMap::new(),
            next_order: 0,
            total_fields_limit,
            keep_sources: true,
        };
        if builtin_logs_template {
            let body = builtin_logs_template_body();
            if let Ok(t) = store.parse_template(&body) {
                store
                    .templates
                    .insert("logs".into(), Template { builtin: true, ..t });
            }
        }
        store
    }

    /// The next global insertion number.
    pub(crate) fn take_order(&mut self) -> u64 {
        let o = self.next_order;
        self.next_order += 1;
        o
    }

    /// Default settings of a new index.
    pub(crate) fn default_settings(&self) -> IndexSettings {
        IndexSettings::new(self.total_fields_limit)
    }

    /// Resolves a name to a concrete index without creating anything.
    pub(crate) fn resolve(&self, name: &str) -> Option<Target> {
        if let Some(backing) = self.data_streams.get(name) {
            return Some(Target {
                index: backing.clone(),
                data_stream: Some(name.to_string()),
            });
        }
        self.indices.get(name).map(|i| Target {
            index: name.to_string(),
            data_stream: i.data_stream.clone(),
        })
    }

    /// The template Elasticsearch would apply to a new index `name`: the matching one
    /// with the highest priority.
    pub(crate) fn matching_template(&self, name: &str) -> Option<(&String, &Template)> {
        self.templates
            .iter()
            .filter(|(_, t)| t.patterns.iter().any(|p| mapping::glob_match(p, name)))
            .max_by_key(|(_, t)| t.priority)
    }

    /// Resolves `name` for a write, creating the index (or data stream) as Elasticsearch's
    /// auto-create does. The error is the reason of `invalid_index_name_exception`.
    pub(crate) fn resolve_or_create(&mut self, name: &str, now_ms: i64) -> Result<Target, String> {
        if let Some(t) = self.resolve(name) {
            return Ok(t);
        }
        validate_index_name(name)?;
        let (mapping, settings, data_stream) = match self.matching_template(name) {
            Some((_, t)) => {
                let mut settings = self.default_settings();
                if let Some(s) = &t.settings {
                    settings.apply(s);
                }
                (t.mapping.clone(), settings, t.data_stream)
            }
            None => (RootMapping::default(), self.default_settings(), false),
        };
        if data_stream {
            let backing = format!(".ds-{name}-{}-000001", util::es_date_dotted(now_ms));
            let mut mapping = mapping;
            mapping.ensure_timestamp();
            self.indices.insert(
                backing.clone(),
                Index::new(mapping, settings, Some(name.to_string())),
            );
            self.data_streams.insert(name.to_string(), backing.clone());
            tracing::debug!(data_stream = name, backing = %backing, "created data stream");
            Ok(Target {
                index: backing,
                data_stream: Some(name.to_string()),
            })
        } else {
            self.indices
                .insert(name.to_string(), Index::new(mapping, settings, None));
            tracing::debug!(index = name, "created index");
            Ok(Target {
                index: name.to_string(),
                data_stream: None,
            })
        }
    }

    /// `PUT /{index}` with an optional body of `mappings` and `settings`.
    pub(crate) fn create_index(&mut self, name: &str, body: Option<&Value>) -> Result<(), EsError> {
        if let Some(t) = self.resolve(name) {
            let uuid = self
                .indices
                .get(&t.index)
                .map(|i| i.uuid.clone())
                .unwrap_or_default();
            return Err(EsError::new(
                400,
                "resource_already_exists_exception",
                format!("index [{name}/{uuid}] already exists"),
            )
            .with("index_uuid", uuid)
            .with("index", name));
        }
        validate_index_name(name).map_err(|reason| {
            EsError::new(400, "invalid_index_name_exception", reason)
                .with("index_uuid", "_na_")
                .with("index", name)
        })?;
        let mut settings = self.default_settings();
        let mut mapping = RootMapping::default();
        if let Some((tname, t)) = self.matching_template(name) {
            if t.data_stream {
                return Err(EsError::illegal_argument(format!(
                    "cannot create index with name [{name}], because it matches with template [{tname}] that creates data streams only, use create data stream api instead"
                )));
            }
            mapping = t.mapping.clone();
            if let Some(s) = &t.settings {
                settings.apply(s);
            }
        }
        if let Some(body) = body {
            let Value::Object(m) = body else {
                return Err(EsError::new(
                    400,
                    "parse_exception",
                    "request body must be an object",
                ));
            };
            for (k, v) in m {
                match k.as_str() {
                    "mappings" => {
                        let explicit = mapping::parse_root(v).map_err(|reason| {
                            EsError::new(
                                400,
                                "mapper_parsing_exception",
                                format!("Failed to parse mapping: {reason}"),
                            )
                        })?;
                        // Request mappings win over the template's, field by field.
                        mapping.root.properties.extend(explicit.root.properties);
                        if explicit.root.dynamic.is_some() {
                            mapping.root.dynamic = explicit.root.dynamic;
                        }
                        if explicit.date_detection.is_some() {
                            mapping.date_detection = explicit.date_detection;
                        }
                        if explicit.numeric_detection.is_some() {
                            mapping.numeric_detection = explicit.numeric_detection;
                        }
                        mapping.params.extend(explicit.params);
                    }
                    "settings" => settings.apply(v),
                    "aliases" => {}
                    other => {
                        return Err(EsError::new(
                            400,
                            "parse_exception",
                            format!("unknown key [{other}] for create index"),
                        ))
                    }
                }
            }
        }
        self.indices
            .insert(name.to_string(), Index::new(mapping, settings, None));
        Ok(())
    }

    /// Parses a template body; errors are whole-request errors.
    pub(crate) fn parse_template(&self, body: &Value) -> Result<Template, EsError> {
        let Value::Object(m) = body else {
            return Err(EsError::new(
                400,
                "x_content_parse_exception",
                "[1:1] [index_template] failed to parse object",
            ));
        };
        let mut patterns = Vec::new();
        let mut priority = 0;
        let mut data_stream = false;
        let mut mapping = RootMapping::default();
        let mut settings = None;
        let mut composed_of = Vec::new();
        let mut ignore_missing = Vec::new();
        for (k, v) in m {
            match k.as_str() {
                "index_patterns" => match v {
                    Value::String(s) => patterns.push(s.clone()),
                    Value::Array(a) => {
                        patterns.extend(a.iter().filter_map(|p| p.as_str().map(String::from)))
                    }
                    _ => {}
                },
                "priority" => priority = v.as_i64().unwrap_or(0),
                "data_stream" => data_stream = v.is_object(),
                "template" => {
                    let Value::Object(t) = v else { continue };
                    for (tk, tv) in t {
                        match tk.as_str() {
                            "mappings" => {
                                mapping = mapping::parse_root(tv).map_err(|reason| {
                                    EsError::new(
                                        400,
                                        "mapper_parsing_exception",
                                        format!("Failed to parse mapping: {reason}"),
                                    )
                                })?
                            }
                            "settings" => settings = Some(tv.clone()),
                            "aliases" | "lifecycle" | "data_stream_options" => {}
                            other => {
                                return Err(EsError::new(
                                    400,
                                    "x_content_parse_exception",
                                    format!("[1:2] [template] unknown field [{other}]"),
                                ))
                            }
                        }
                    }
                }
                "composed_of" => {
                    composed_of = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                }
                "ignore_missing_component_templates" => {
                    ignore_missing = v
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|c| c.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default()
                }
                "version" | "_meta" | "allow_auto_create" | "deprecated" => {}
                other => {
                    return Err(EsError::new(
                        400,
                        "x_content_parse_exception",
                        format!("[1:2] [index_template] unknown field [{other}]"),
                    ))
                }
            }
        }
        if patterns.is_empty() {
            return Err(EsError::validation(&[
                "index patterns are missing".to_string()
            ]));
        }
        let missing: Vec<&String> = composed_of
            .iter()
            .filter(|c| !ignore_missing.contains(c))
            .collect();
        if !missing.is_empty() {
            return Err(EsError::new(
                400,
                "invalid_index_template_exception",
                format!(
                    "index_template [composable] invalid, cause [index template specifies component templates {:?} that do not exist; weir-testkit has no component templates]",
                    missing
                ),
            ));
        }
        Ok(Template {
            body: body.clone(),
            patterns,
            priority,
            data_stream,
            mapping,
            settings,
            builtin: false,
        })
    }

    /// `PUT /_index_template/{name}`.
    pub(crate) fn put_template(&mut self, name: &str, body: &Value) -> Result<(), EsError> {
        let template = self.parse_template(body)?;
        for (other_name, other) in &self.templates {
            if other_name == name || other.priority != template.priority {
                continue;
            }
            let overlapping: Vec<&String> = other
                .patterns
                .iter()
                .filter(|p| {
                    template
                        .patterns
                        .iter()
                        .any(|q| mapping::globs_overlap(p, q))
                })
                .collect();
            if !overlapping.is_empty() {
                return Err(EsError::illegal_argument(format!(
                    "index template [{name}] has index patterns [{}] matching patterns from existing templates [{other_name}] with patterns ({other_name} => [{}]) that have the same priority [{}], multiple index templates may not match during index creation, please use a different priority",
                    template.patterns.join(", "),
                    other.patterns.join(", "),
                    template.priority
                )));
            }
        }
        self.templates.insert(name.to_string(), template);
        Ok(())
    }

    /// `GET /_index_template/{name}` body for the templates matching `name` (`*` globs).
    pub(crate) fn get_templates(&self, name: Option<&str>) -> Option<Out> {
        let list: Vec<Out> = self
            .templates
            .iter()
            .filter(|(n, _)| name.is_none_or(|p| mapping::glob_match(p, n)))
            .map(|(n, t)| {
                obj([
                    ("name", n.as_str().into()),
                    ("index_template", Out::V(t.body.clone())),
                ])
            })
            .collect();
        if name.is_some_and(|n| !n.contains('*')) && list.is_empty() {
            return None;
        }
        Some(obj([("index_templates", Out::A(list))]))
    }
}

/// Elasticsearch 8's built-in `logs` template (`logs-*-*`, priority 100), reduced to what
/// changes indexing: a data stream, `@timestamp` as date, `data_stream.*` as
/// `constant_keyword`, strings as `keyword` (`ecs@mappings`), no date detection,
/// `ignore_malformed` and ignoring dynamic fields beyond the field limit (`logs@settings`).
fn builtin_logs_template_body() -> Value {
    json!({
        "index_patterns": ["logs-*-*"],
        "priority": 100,
        "data_stream": {"hidden": false, "allow_custom_routing": false},
        "template": {
            "settings": {
                "index": {
                    "mapping": {
                        "ignore_malformed": true,
                        "total_fields": {"ignore_dynamic_beyond_limit": true}
                    }
                }
            },
            "mappings": {
                "date_detection": false,
                "dynamic_templates": [
                    {"ecs_message_match_only_text": {"path_match": ["message", "*.message"], "unmatch_mapping_type": "object", "mapping": {"type": "match_only_text"}}},
                    {"ecs_timestamp": {"match": "@timestamp", "mapping": {"ignore_malformed": false, "type": "date"}}},
                    {"strings_as_keyword": {"match_mapping_type": "string", "mapping": {"ignore_above": 1024, "type": "keyword"}}}
                ],
                "properties": {
                    "@timestamp": {"type": "date", "ignore_malformed": false},
                    "data_stream": {"properties": {
                        "type": {"type": "constant_keyword", "value": "logs"},
                        "dataset": {"type": "constant_keyword"},
                        "namespace": {"type": "constant_keyword"}
                    }}
                }
            }
        },
        "_meta": {"description": "default logs template installed by x-pack", "managed": true},
        "allow_auto_create": true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_elasticsearch() {
        assert!(validate_index_name("logs-2026.01.01").is_ok());
        assert_eq!(
            validate_index_name("Logs").unwrap_err(),
            "Invalid index name [Logs], must be lowercase"
        );
        assert!(validate_index_name("a b")
            .unwrap_err()
            .contains("must not contain the following characters"));
        assert!(validate_index_name("_x")
            .unwrap_err()
            .contains("must not start with"));
        assert!(validate_index_name("a:b").unwrap_err().contains("':'"));
        assert!(validate_index_name("..")
            .unwrap_err()
            .contains("'.' or '..'"));
        assert!(validate_index_name(&"a".repeat(256))
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn builtin_logs_template_makes_data_streams() {
        let mut s = Store::new(1000, true);
        let t = s
            .resolve_or_create("logs-weir-default", 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(t.data_stream.as_deref(), Some("logs-weir-default"));
        assert_eq!(t.index, ".ds-logs-weir-default-1970.01.01-000001");
        let t = s
            .resolve_or_create("weir", 0)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(t.data_stream.is_none());
    }
}
