//! `POST /_bulk`: the NDJSON parser (whole-request errors, as Elasticsearch's
//! `BulkRequestParser` and `BulkRequest.validate()` produce them) and the per-item
//! execution (per-item statuses, in request order).

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::mapping::{self, DocError};
use super::out::{obj, EsError, Out};
use super::store::{Store, StoredDoc, Target};
use super::ItemFault;
use crate::json::{self, Kind, Node, SyntaxError};
use crate::server::lock;
use crate::util;

/// The injected per-item fault function.
pub(crate) type ItemFaultFn = Arc<dyn Fn(&Value) -> Option<ItemFault> + Send + Sync>;

/// What a bulk item does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Index,
    Create,
    Update,
    Delete,
}

impl Action {
    fn key(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VersionType {
    Internal,
    External,
    ExternalGte,
}

/// The body of an `update` item.
#[derive(Clone, Debug)]
struct UpdateBody {
    doc: Option<Node>,
    upsert: Option<Node>,
    doc_as_upsert: bool,
    script: bool,
    detect_noop: bool,
}

/// One parsed bulk item.
#[derive(Clone, Debug)]
struct Op<'a> {
    action: Action,
    index: Option<String>,
    id: Option<String>,
    pipeline: Option<String>,
    require_alias: Option<bool>,
    if_seq_no: Option<i64>,
    if_primary_term: Option<i64>,
    version: Option<i64>,
    version_type: VersionType,
    /// The source line of index/create (`Err` if it is not UTF-8).
    source: Option<Result<&'a str, usize>>,
    /// `source` parsed ([`execute`] does it before the store is taken).
    parsed: Option<Result<Node, DocError>>,
    update: Option<UpdateBody>,
}

/// Request-wide parameters (path and query string).
#[derive(Clone, Debug, Default)]
pub(crate) struct BulkParams {
    pub index: Option<String>,
    pub pipeline: Option<String>,
    pub require_alias: bool,
}

fn x_content(e: &SyntaxError) -> EsError {
    // Each action line gets its own parser in Elasticsearch, so positions are line 1.
    EsError::new(
        400,
        "x_content_parse_exception",
        format!("{} {}", e.pos, e.message),
    )
}

fn malformed(line: usize, what: String) -> EsError {
    EsError::illegal_argument(format!("Malformed action/metadata line [{line}], {what}"))
}

fn token_at(text: &str) -> &'static str {
    match text.trim_start().as_bytes().first() {
        Some(b'{') => "START_OBJECT",
        Some(b'[') => "START_ARRAY",
        Some(b'"') => "VALUE_STRING",
        Some(b't' | b'f') => "VALUE_BOOLEAN",
        Some(b'n') => "VALUE_NULL",
        Some(b'}') => "END_OBJECT",
        Some(b']') => "END_ARRAY",
        _ => "VALUE_NUMBER",
    }
}

fn scalar_text(node: &Node) -> Option<String> {
    match &node.kind {
        Kind::Str(s) => Some(s.clone()),
        Kind::Num(raw) => Some(raw.clone()),
        Kind::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn scalar_long(node: &Node) -> Result<i64, EsError> {
    let text = scalar_text(node).unwrap_or_default();
    text.parse::<i64>()
        .or_else(|_| text.parse::<f64>().map(|f| f as i64))
        .map_err(|_| EsError::illegal_argument(format!("For input string: \"{text}\"")))
}

fn scalar_bool(node: &Node) -> Result<bool, EsError> {
    match &node.kind {
        Kind::Bool(b) => Ok(*b),
        Kind::Str(s) if s == "true" => Ok(true),
        Kind::Str(s) if s == "false" => Ok(false),
        _ => Err(EsError::illegal_argument(format!(
            "Failed to parse value [{}] as only [true] or [false] are allowed.",
            scalar_text(node).unwrap_or_default()
        ))),
    }
}

/// Parses one action line; `Ok(None)` for a blank line (Elasticsearch skips those).
fn parse_action(text: &str, line: usize) -> Result<Option<Op<'static>>, EsError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let (node, trailing) = json::parse_prefix(text).map_err(|e| x_content(&e))?;
    let Kind::Obj(members) = &node.kind else {
        return Err(malformed(
            line,
            format!("expected START_OBJECT but found [{}]", node.token_name()),
        ));
    };
    let Some((action_name, meta)) = members.first() else {
        return Err(malformed(
            line,
            "expected FIELD_NAME but found [END_OBJECT]".into(),
        ));
    };
    let action = match action_name.as_str() {
        "index" => Action::Index,
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        other => {
            return Err(malformed(
                line,
                format!(
                    "expected field [create], [delete], [index] or [update] but found [{other}]"
                ),
            ))
        }
    };
    let Kind::Obj(params) = &meta.kind else {
        return Err(malformed(
            line,
            format!(
                "expected START_OBJECT or END_OBJECT but found [{}]",
                meta.token_name()
            ),
        ));
    };
    let mut op = Op {
        action,
        index: None,
        id: None,
        pipeline: None,
        require_alias: None,
        if_seq_no: None,
        if_primary_term: None,
        version: None,
        version_type: VersionType::Internal,
        source: None,
        parsed: None,
        update: None,
    };
    let mut op_type = None;
    for (key, value) in params {
        match &value.kind {
            Kind::Arr(_) => {
                return Err(malformed(
                    line,
                    format!("expected a simple value for field [{key}] but found [START_ARRAY]"),
                ))
            }
            Kind::Obj(_) if key == "dynamic_templates" || key == "_source" => continue,
            Kind::Obj(_) => {
                return Err(malformed(
                    line,
                    format!("expected a simple value for field [{key}] but found [START_OBJECT]"),
                ))
            }
            Kind::Null => continue,
            _ => {}
        }
        match key.as_str() {
            "_index" => op.index = scalar_text(value),
            "_id" => op.id = scalar_text(value),
            "routing" => {}
            "op_type" => op_type = scalar_text(value),
            "version" => op.version = Some(scalar_long(value)?),
            "version_type" => {
                op.version_type = match scalar_text(value).as_deref() {
                    Some("internal") => VersionType::Internal,
                    Some("external") => VersionType::External,
                    Some("external_gte") => VersionType::ExternalGte,
                    other => {
                        return Err(EsError::illegal_argument(format!(
                            "No version type match [{}]",
                            other.unwrap_or_default()
                        )))
                    }
                }
            }
            "if_seq_no" => op.if_seq_no = Some(scalar_long(value)?),
            "if_primary_term" => op.if_primary_term = Some(scalar_long(value)?),
            "retry_on_conflict" => {
                scalar_long(value)?;
            }
            "pipeline" => op.pipeline = scalar_text(value),
            "require_alias" => op.require_alias = Some(scalar_bool(value)?),
            "require_data_stream" | "list_executed_pipelines" => {
                scalar_bool(value)?;
            }
            "_source" | "dynamic_templates" => {}
            other => {
                return Err(EsError::illegal_argument(format!(
                    "Action/metadata line [{line}] contains an unknown parameter [{other}]"
                )))
            }
        }
    }
    if members.len() > 1 {
        return Err(malformed(
            line,
            "expected END_OBJECT but found [FIELD_NAME]".into(),
        ));
    }
    if let Some(pos) = trailing {
        let rest = text
            .lines()
            .next()
            .and_then(|l| l.get(pos.col.saturating_sub(1)..))
            .unwrap_or_default();
        return Err(malformed(
            line,
            format!("expected end of data but found [{}]", token_at(rest)),
        ));
    }
    if action == Action::Index {
        match op_type.as_deref() {
            None | Some("index") => {}
            Some("create") => op.action = Action::Create,
            Some(other) => {
                return Err(EsError::illegal_argument(format!(
                    "opType must be 'create' or 'index', found: [{other}]"
                )))
            }
        }
    }
    Ok(Some(op))
}

fn parse_update_body(text: &str) -> Result<UpdateBody, EsError> {
    let node = json::parse(text).map_err(|e| x_content(&e))?;
    let Kind::Obj(members) = &node.kind else {
        return Err(EsError::new(
            400,
            "x_content_parse_exception",
            format!(
                "{} [UpdateRequest] Expected START_OBJECT but was: {}",
                node.start,
                node.token_name()
            ),
        ));
    };
    let mut body = UpdateBody {
        doc: None,
        upsert: None,
        doc_as_upsert: false,
        script: false,
        detect_noop: true,
    };
    for (key, value) in members {
        let bad_type = || {
            EsError::new(
                400,
                "x_content_parse_exception",
                format!(
                    "{} [UpdateRequest] {key} doesn't support values of type: {}",
                    value.start,
                    value.token_name()
                ),
            )
        };
        match key.as_str() {
            "doc" => match value.kind {
                Kind::Obj(_) => body.doc = Some(value.clone()),
                _ => return Err(bad_type()),
            },
            "upsert" => match value.kind {
                Kind::Obj(_) => body.upsert = Some(value.clone()),
                _ => return Err(bad_type()),
            },
            "doc_as_upsert" => body.doc_as_upsert = scalar_bool(value).map_err(|_| bad_type())?,
            "detect_noop" => body.detect_noop = scalar_bool(value).map_err(|_| bad_type())?,
            "scripted_upsert" => {
                scalar_bool(value).map_err(|_| bad_type())?;
            }
            "script" => body.script = true,
            "_source" => {}
            other => {
                return Err(EsError::new(
                    400,
                    "x_content_parse_exception",
                    format!("{} [UpdateRequest] unknown field [{other}]", value.start),
                ))
            }
        }
    }
    Ok(body)
}

fn line_str(bytes: &[u8]) -> Result<&str, usize> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| e.valid_up_to())
}

/// Splits and parses the NDJSON body as Elasticsearch's `BulkRequestParser` does.
fn parse_body(body: &[u8]) -> Result<Vec<Op<'_>>, EsError> {
    let mut ops = Vec::new();
    let mut from = 0;
    let mut line = 0;
    let next_newline = |from: usize| -> Result<Option<usize>, EsError> {
        match body[from..].iter().position(|&b| b == b'\n') {
            Some(i) => Ok(Some(from + i)),
            None if from != body.len() => Err(EsError::illegal_argument(
                "The bulk request must be terminated by a newline [\\n]",
            )),
            None => Ok(None),
        }
    };
    while let Some(end) = next_newline(from)? {
        line += 1;
        let action_text = line_str(&body[from..end]).map_err(|at| {
            EsError::new(
                400,
                "x_content_parse_exception",
                format!("[1:{}] Invalid UTF-8 start byte", at + 1),
            )
        })?;
        from = end + 1;
        let Some(op) = parse_action(action_text, line)? else {
            continue;
        };
        let mut op: Op<'_> = op;
        if op.action != Action::Delete {
            // An action without its source line at the very end is dropped, as in
            // Elasticsearch.
            let Some(end) = next_newline(from)? else {
                break;
            };
            line += 1;
            let source = line_str(&body[from..end]);
            from = end + 1;
            if op.action == Action::Update {
                let text = source.map_err(|at| {
                    EsError::new(
                        400,
                        "x_content_parse_exception",
                        format!("[1:{}] Invalid UTF-8 start byte", at + 1),
                    )
                })?;
                op.update = Some(parse_update_body(text)?);
            } else {
                op.source = Some(source);
            }
        }
        ops.push(op);
    }
    Ok(ops)
}

/// `BulkRequest.validate()`: every item's problems, numbered in one message.
fn validate(ops: &[Op<'_>], params: &BulkParams) -> Result<(), EsError> {
    let mut errors: Vec<String> = Vec::new();
    if ops.is_empty() {
        errors.push("no requests added".into());
    }
    for op in ops {
        if op.index.is_none() && params.index.is_none() {
            errors.push("index is missing".into());
        }
        let cas = |errors: &mut Vec<String>| {
            let version = op.version.unwrap_or(-3);
            match op.version_type {
                VersionType::External | VersionType::ExternalGte if version < 0 => {
                    errors.push(format!(
                        "illegal version value [{version}] for version type [{}]",
                        if op.version_type == VersionType::External { "EXTERNAL" } else { "EXTERNAL_GTE" }
                    ));
                }
                VersionType::Internal if op.version.is_some() => errors.push(
                    "internal versioning can not be used for optimistic concurrency control. Please use `if_seq_no` and `if_primary_term` instead".into(),
                ),
                _ => {}
            }
            if op.if_seq_no.is_some()
                && (op.version_type != VersionType::Internal || op.version.is_some())
            {
                errors.push("compare and write operations can not use versioning".into());
            }
            if op.if_seq_no.is_some() && op.if_primary_term.is_none() {
                errors.push("ifSeqNo is set, but primary term is [0]".into());
            }
            if let (None, Some(term)) = (op.if_seq_no, op.if_primary_term) {
                errors.push(format!(
                    "ifSeqNo is unassigned, but primary term is [{term}]"
                ));
            }
        };
        match op.action {
            Action::Index | Action::Create => {
                if matches!(op.source, Some(Ok("")) | None) {
                    errors.push("source is missing".into());
                }
                if op.action == Action::Create {
                    if op.version_type != VersionType::Internal {
                        errors.push(
                            "create operations only support internal versioning. use index instead"
                                .into(),
                        );
                        continue;
                    }
                    if op.version.is_some() {
                        errors.push(
                            "create operations do not support explicit versions. use index instead"
                                .into(),
                        );
                        continue;
                    }
                    if op.if_seq_no.is_some() || op.if_primary_term.is_some() {
                        errors.push(
                            "create operations do not support compare and set. use index instead"
                                .into(),
                        );
                        continue;
                    }
                }
                if op.id.is_none()
                    && (op.version_type != VersionType::Internal || op.version.is_some())
                {
                    errors.push("an id must be provided if version type or value are set".into());
                }
                cas(&mut errors);
                if let Some(id) = &op.id {
                    if id.len() > 512 {
                        errors.push(format!(
                            "id [{id}] is too long, must be no longer than 512 bytes but was: {}",
                            id.len()
                        ));
                    }
                }
                if op.pipeline.as_deref() == Some("") {
                    errors.push("pipeline cannot be an empty string".into());
                }
            }
            Action::Delete => {
                if op.id.is_none() {
                    errors.push("id is missing".into());
                }
                cas(&mut errors);
            }
            Action::Update => {
                if op.id.is_none() {
                    errors.push("id is missing".into());
                }
                if let Some(u) = &op.update {
                    if !u.script && u.doc.is_none() {
                        errors.push("script or doc is missing".into());
                    }
                }
                if op.version.is_some() {
                    errors.push("can't provide version in update request".into());
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EsError::validation(&errors))
    }
}

/// One response item.
struct Item {
    action: Action,
    index: String,
    id: Option<String>,
    outcome: Outcome,
}

enum Outcome {
    Done {
        version: u64,
        result: &'static str,
        seq_no: i64,
        noop: bool,
        status: u16,
    },
    Failed {
        status: u16,
        error: Out,
    },
}

impl Item {
    fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. })
    }

    fn to_out(&self) -> Out {
        let body = match &self.outcome {
            Outcome::Done {
                version,
                result,
                seq_no,
                noop,
                status,
            } => {
                let shards = if *noop {
                    obj([
                        ("total", 0u32.into()),
                        ("successful", 0u32.into()),
                        ("failed", 0u32.into()),
                    ])
                } else {
                    obj([
                        ("total", 2u32.into()),
                        ("successful", 1u32.into()),
                        ("failed", 0u32.into()),
                    ])
                };
                obj([
                    ("_index", self.index.as_str().into()),
                    ("_id", self.id.clone().into()),
                    ("_version", (*version).into()),
                    ("result", (*result).into()),
                    ("_shards", shards),
                    ("_seq_no", (*seq_no).into()),
                    ("_primary_term", 1u32.into()),
                    ("status", (*status).into()),
                ])
            }
            Outcome::Failed { status, error } => obj([
                ("_index", self.index.as_str().into()),
                ("_id", self.id.clone().into()),
                ("status", (*status).into()),
                ("error", error.clone()),
            ]),
        };
        Out::O(vec![(self.action.key().to_string(), body)])
    }
}

fn error_obj(error_type: &str, reason: &str, extra: Vec<(&str, Out)>) -> Out {
    let mut members = vec![
        ("type".to_string(), Out::from(error_type)),
        ("reason".to_string(), Out::from(reason)),
    ];
    members.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
    Out::O(members)
}

fn shard_error(error_type: &str, reason: &str, uuid: &str, index: &str) -> Out {
    error_obj(
        error_type,
        reason,
        vec![
            ("index_uuid", uuid.into()),
            ("shard", "0".into()),
            ("index", index.into()),
        ],
    )
}

fn doc_error_out(e: &DocError) -> Out {
    let mut extra = Vec::new();
    if let Some((t, r)) = &e.caused_by {
        extra.push(("caused_by", error_obj(t, r, Vec::new())));
    }
    error_obj(e.error_type, &e.reason, extra)
}

/// Parses a document source line as Elasticsearch's `DocumentParser` starts to.
fn parse_source(source: Result<&str, usize>) -> Result<Node, DocError> {
    let text = source.map_err(|at| DocError {
        error_type: "document_parsing_exception",
        reason: format!("[1:{}] failed to parse: Invalid UTF-8 start byte", at + 1),
        caused_by: None,
    })?;
    let (node, trailing) = json::parse_prefix(text).map_err(|e| DocError {
        error_type: "document_parsing_exception",
        reason: format!("{} failed to parse: {}", e.pos, e.message),
        caused_by: Some((
            "x_content_parse_exception".into(),
            format!("{} {}", e.pos, e.message),
        )),
    })?;
    if !matches!(node.kind, Kind::Obj(_)) {
        return Err(DocError {
            error_type: "document_parsing_exception",
            reason: format!(
                "{} Malformed content, must start with an object",
                node.start
            ),
            caused_by: None,
        });
    }
    if let Some(pos) = trailing {
        let rest = text.get(pos.col.saturating_sub(1)..).unwrap_or_default();
        return Err(DocError {
            error_type: "document_parsing_exception",
            reason: format!(
                "{pos} failed to parse: Malformed content, found extra data after parsing: {}",
                token_at(rest)
            ),
            caused_by: None,
        });
    }
    Ok(node)
}

/// Elasticsearch's partial-document merge for `update`.
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing @ Value::Object(_)) if v.is_object() => deep_merge(existing, v),
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

struct Exec<'s> {
    store: &'s mut Store,
    params: &'s BulkParams,
    faults: Option<&'s ItemFaultFn>,
    now_ms: i64,
}

impl Exec<'_> {
    fn run(&mut self, op: &Op<'_>) -> Item {
        let index_name = op
            .index
            .clone()
            .or_else(|| self.params.index.clone())
            .unwrap_or_default();
        let mut item = Item {
            action: op.action,
            index: index_name.clone(),
            id: op.id.clone(),
            outcome: Outcome::Failed {
                status: 500,
                error: error_obj("exception", "weir-testkit: item not executed", Vec::new()),
            },
        };
        item.outcome = match self.outcome(op, &index_name, &mut item) {
            Ok(o) | Err(o) => o,
        };
        item
    }

    fn fail(status: u16, error: Out) -> Outcome {
        Outcome::Failed { status, error }
    }

    fn outcome(&mut self, op: &Op<'_>, name: &str, item: &mut Item) -> Result<Outcome, Outcome> {
        // Injected faults first: they stand for rejections before the shard is reached.
        if let Some(faults) = &self.faults {
            let source = match (&op.source, &op.update) {
                (Some(Ok(text)), _) => json::parse(text)
                    .map(|n| n.to_value())
                    .unwrap_or(Value::Null),
                (_, Some(u)) => u.doc.as_ref().map(Node::to_value).unwrap_or(Value::Null),
                _ => Value::Null,
            };
            if let Some(f) = faults(&source) {
                return Err(Self::fail(
                    f.status,
                    error_obj(&f.error_type, &f.reason, Vec::new()),
                ));
            }
        }
        let require_alias = op.require_alias.unwrap_or(self.params.require_alias);
        if require_alias {
            let mut e = EsError::index_not_found(name);
            e.reason = format!(
                "no such index [{name}] and [require_alias] request flag is [true] and [{name}] is not an alias"
            );
            let extra: Vec<(&str, Out)> = e
                .extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.clone()))
                .collect();
            return Err(Self::fail(404, error_obj(&e.error_type, &e.reason, extra)));
        }
        if op.action != Action::Delete {
            if let Some(p) = op.pipeline.as_ref().or(self.params.pipeline.as_ref()) {
                if p != "_none" {
                    return Err(Self::fail(
                        400,
                        error_obj(
                            "illegal_argument_exception",
                            &format!("pipeline with id [{p}] does not exist"),
                            Vec::new(),
                        ),
                    ));
                }
            }
        }
        let target = match op.action {
            // Elasticsearch does not auto-create an index for a delete.
            Action::Delete => match self.store.resolve(name) {
                Some(t) => t,
                None => {
                    let e = EsError::index_not_found(name);
                    let extra: Vec<(&str, Out)> = e
                        .extra
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.clone()))
                        .collect();
                    return Err(Self::fail(404, error_obj(&e.error_type, &e.reason, extra)));
                }
            },
            _ => self.create(name)?,
        };
        if target.data_stream.is_some() && op.action != Action::Create {
            return Err(Self::fail(
                400,
                error_obj(
                    "illegal_argument_exception",
                    "only write ops with an op_type of create are allowed in data streams",
                    Vec::new(),
                ),
            ));
        }
        item.index = target.index.clone();
        let id = match (&op.id, op.action) {
            (Some(id), _) if id.is_empty() => {
                return Err(Self::fail(
                    400,
                    error_obj(
                        "illegal_argument_exception",
                        "if _id is specified it must not be empty",
                        Vec::new(),
                    ),
                ))
            }
            (Some(id), _) => id.clone(),
            (None, _) => util::random_id(20),
        };
        item.id = Some(id.clone());
        match op.action {
            Action::Index | Action::Create => {
                let owned;
                let parsed = match &op.parsed {
                    Some(p) => p,
                    None => {
                        owned = parse_source(op.source.unwrap_or(Ok("")));
                        &owned
                    }
                };
                let node = parsed
                    .as_ref()
                    .map_err(|e| Self::fail(400, doc_error_out(e)))?;
                self.write(op, &target, &id, node, false)
            }
            Action::Delete => self.delete(op, &target, &id),
            Action::Update => self.update(op, &target, &id),
        }
    }

    fn create(&mut self, name: &str) -> Result<Target, Outcome> {
        self.store
            .resolve_or_create(name, self.now_ms)
            .map_err(|reason| {
                Self::fail(
                    400,
                    error_obj(
                        "invalid_index_name_exception",
                        &reason,
                        vec![("index_uuid", "_na_".into()), ("index", name.into())],
                    ),
                )
            })
    }

    fn conflict(&self, target: &Target, reason: String) -> Outcome {
        let uuid = self
            .store
            .indices
            .get(&target.index)
            .map(|i| i.uuid.clone())
            .unwrap_or_default();
        Self::fail(
            409,
            shard_error(
                "version_conflict_engine_exception",
                &reason,
                &uuid,
                &target.index,
            ),
        )
    }

    /// Optimistic concurrency and external versioning; returns the version to write.
    fn check_versions(
        &self,
        op: &Op<'_>,
        target: &Target,
        id: &str,
    ) -> Result<Option<u64>, Outcome> {
        let Some(index) = self.store.indices.get(&target.index) else {
            return Ok(None);
        };
        let current = index.docs.get(id);
        if let (Some(seq), Some(term)) = (op.if_seq_no, op.if_primary_term) {
            match current {
                None => {
                    return Err(self.conflict(
                        target,
                        format!("[{id}]: version conflict, required seqNo [{seq}], primary term [{term}]. but no document was found"),
                    ))
                }
                Some(d) if d.seq_no != seq || term != 1 => {
                    return Err(self.conflict(
                        target,
                        format!(
                            "[{id}]: version conflict, required seqNo [{seq}], primary term [{term}]. current document has seqNo [{}] and primary term [1]",
                            d.seq_no
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        let Some(wanted) = op.version else {
            return Ok(None);
        };
        let wanted = wanted.max(0) as u64;
        let existing = current
            .map(|d| d.version)
            .or_else(|| index.tombstones.get(id).copied());
        match (op.version_type, existing) {
            (VersionType::External, Some(cur)) if wanted <= cur => Err(self.conflict(
                target,
                format!("[{id}]: version conflict, current version [{cur}] is higher or equal to the one provided [{wanted}]"),
            )),
            (VersionType::ExternalGte, Some(cur)) if wanted < cur => Err(self.conflict(
                target,
                format!("[{id}]: version conflict, current version [{cur}] is higher than the one provided [{wanted}]"),
            )),
            (VersionType::Internal, _) => Ok(None),
            _ => Ok(Some(wanted)),
        }
    }

    /// Index or create `node` as `id`.
    fn write(
        &mut self,
        op: &Op<'_>,
        target: &Target,
        id: &str,
        node: &Node,
        from_update: bool,
    ) -> Result<Outcome, Outcome> {
        let explicit_version = self.check_versions(op, target, id)?;
        let order = self.store.take_order();
        let keep_source = self.store.keep_sources;
        let Some(index) = self.store.indices.get_mut(&target.index) else {
            return Err(Self::fail(
                500,
                error_obj("exception", "weir-testkit: index vanished", Vec::new()),
            ));
        };
        let existing = index.docs.get(id).cloned();
        if op.action == Action::Create && !from_update {
            if let Some(d) = &existing {
                let uuid = index.uuid.clone();
                return Err(Self::fail(
                    409,
                    shard_error(
                        "version_conflict_engine_exception",
                        &format!(
                            "[{id}]: version conflict, document already exists (current version [{}])",
                            d.version
                        ),
                        &uuid,
                        &target.index,
                    ),
                ));
            }
        }
        let updated = mapping::parse_document(&mut index.mapping, &index.settings, id, node)
            .map_err(|e| Self::fail(400, doc_error_out(&e)))?;
        if target.data_stream.is_some() {
            let has_ts = matches!(&node.kind, Kind::Obj(m) if m.iter().any(|(k, v)| k == "@timestamp" && !matches!(v.kind, Kind::Null)));
            if !has_ts {
                return Err(Self::fail(
                    400,
                    doc_error_out(&DocError {
                        error_type: "document_parsing_exception",
                        reason: format!(
                            "{} failed to parse: data stream timestamp field [@timestamp] is missing",
                            node.end
                        ),
                        caused_by: Some((
                            "illegal_argument_exception".into(),
                            "data stream timestamp field [@timestamp] is missing".into(),
                        )),
                    }),
                ));
            }
        }
        if let Some(m) = updated {
            index.mapping = m;
        }
        let version = explicit_version.unwrap_or_else(|| {
            existing
                .as_ref()
                .map(|d| d.version + 1)
                .or_else(|| index.tombstones.get(id).map(|v| v + 1))
                .unwrap_or(1)
        });
        let seq_no = index.take_seq_no();
        index.tombstones.remove(id);
        index.docs.insert(
            id.to_string(),
            StoredDoc {
                source: if keep_source {
                    node.to_value()
                } else {
                    Value::Null
                },
                version,
                seq_no,
                order: existing.as_ref().map_or(order, |d| d.order),
            },
        );
        let (result, status) = if existing.is_some() {
            ("updated", 200)
        } else {
            ("created", 201)
        };
        Ok(Outcome::Done {
            version,
            result,
            seq_no,
            noop: false,
            status,
        })
    }

    fn delete(&mut self, op: &Op<'_>, target: &Target, id: &str) -> Result<Outcome, Outcome> {
        let explicit_version = self.check_versions(op, target, id)?;
        let Some(index) = self.store.indices.get_mut(&target.index) else {
            return Err(Self::fail(
                500,
                error_obj("exception", "weir-testkit: index vanished", Vec::new()),
            ));
        };
        let seq_no = index.take_seq_no();
        let (version, result, status) = match index.docs.remove(id) {
            Some(d) => (explicit_version.unwrap_or(d.version + 1), "deleted", 200),
            None => (
                explicit_version.unwrap_or_else(|| index.tombstones.get(id).map_or(1, |v| v + 1)),
                "not_found",
                404,
            ),
        };
        index.tombstones.insert(id.to_string(), version);
        Ok(Outcome::Done {
            version,
            result,
            seq_no,
            noop: false,
            status,
        })
    }

    fn update(&mut self, op: &Op<'_>, target: &Target, id: &str) -> Result<Outcome, Outcome> {
        let Some(body) = &op.update else {
            return Err(Self::fail(
                400,
                error_obj(
                    "action_request_validation_exception",
                    "Validation Failed: 1: script or doc is missing;",
                    Vec::new(),
                ),
            ));
        };
        if body.script {
            return Err(Self::fail(
                400,
                error_obj(
                    "illegal_argument_exception",
                    "weir-testkit does not run scripts: scripted updates are not supported",
                    Vec::new(),
                ),
            ));
        }
        self.check_versions(op, target, id)?;
        let (uuid, existing) = match self.store.indices.get(&target.index) {
            Some(i) => (i.uuid.clone(), i.docs.get(id).cloned()),
            None => (String::new(), None),
        };
        let new_source: Value = match (&existing, &body.doc) {
            (Some(d), Some(doc)) => {
                let mut merged = d.source.clone();
                deep_merge(&mut merged, &doc.to_value());
                if body.detect_noop && merged == d.source {
                    return Ok(Outcome::Done {
                        version: d.version,
                        result: "noop",
                        seq_no: d.seq_no,
                        noop: true,
                        status: 200,
                    });
                }
                merged
            }
            (Some(d), None) => d.source.clone(),
            (None, doc) => {
                let upsert = if body.doc_as_upsert {
                    doc.as_ref()
                } else {
                    body.upsert.as_ref()
                };
                match upsert {
                    Some(n) => n.to_value(),
                    None => {
                        return Err(Self::fail(
                            404,
                            shard_error(
                                "document_missing_exception",
                                &format!("[{id}]: document missing"),
                                &uuid,
                                &target.index,
                            ),
                        ))
                    }
                }
            }
        };
        // Re-parse the merged document to check it against the mapping like a new one.
        let text = serde_json::to_string(&new_source).unwrap_or_else(|_| "{}".into());
        let node = json::parse(&text).map_err(|e| {
            Self::fail(
                400,
                doc_error_out(&DocError {
                    error_type: "document_parsing_exception",
                    reason: format!("{} failed to parse: {}", e.pos, e.message),
                    caused_by: None,
                }),
            )
        })?;
        let write_op = Op {
            action: Action::Index,
            version: None,
            version_type: VersionType::Internal,
            if_seq_no: None,
            if_primary_term: None,
            ..op.clone()
        };
        self.write(&write_op, target, id, &node, true)
    }
}

/// The outcome of a bulk request: the response body, and the number of items.
pub(crate) struct BulkResult {
    pub body: Out,
}

/// A bulk body parsed and validated: the work that needs no store.
pub(crate) struct Prepared<'a> {
    ops: Vec<Op<'a>>,
}

/// Parses and validates a bulk body.
pub(crate) fn prepare<'a>(body: &'a [u8], params: &BulkParams) -> Result<Prepared<'a>, EsError> {
    let ops = parse_body(body)?;
    validate(&ops, params)?;
    Ok(Prepared { ops })
}

/// Executes prepared items in order, holding `store` for one item at a time, as
/// Elasticsearch's write threads apply concurrent bulk requests item by item: a
/// document's source is parsed before the store is taken and freed after it is let go.
pub(crate) fn execute(
    store: &Mutex<Store>,
    prepared: Prepared<'_>,
    params: &BulkParams,
    faults: Option<ItemFaultFn>,
    started: std::time::Instant,
) -> BulkResult {
    let now_ms = (util::now_nanos() / 1_000_000) as i64;
    let items: Vec<Item> = prepared
        .ops
        .into_iter()
        .map(|mut op| {
            if matches!(op.action, Action::Index | Action::Create) {
                op.parsed = Some(parse_source(op.source.unwrap_or(Ok(""))));
            }
            let mut store = lock(store);
            Exec {
                store: &mut store,
                params,
                faults: faults.as_ref(),
                now_ms,
            }
            .run(&op)
        })
        .collect();
    let errors = items.iter().any(Item::failed);
    let took = started.elapsed().as_millis() as u64;
    BulkResult {
        body: obj([
            ("errors", errors.into()),
            ("took", took.into()),
            ("items", Out::A(items.iter().map(Item::to_out).collect())),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_text(store: &Mutex<Store>, text: &str) -> Result<Value, EsError> {
        let params = BulkParams::default();
        let prepared = prepare(text.as_bytes(), &params)?;
        let result = execute(store, prepared, &params, None, std::time::Instant::now());
        Ok(result.body.to_value())
    }

    #[test]
    fn whole_request_errors() {
        let s = Mutex::new(Store::new(1000, true));
        let e = run_text(&s, "{\"index\":{\"_index\":\"a\"}}\n{\"x\":1}").unwrap_err();
        assert_eq!(
            e.reason,
            "The bulk request must be terminated by a newline [\\n]"
        );
        let e = run_text(&s, "\n").unwrap_err();
        assert_eq!(e.reason, "Validation Failed: 1: no requests added;");
        let e = run_text(&s, "{\"index\":{}}\n{}\n").unwrap_err();
        assert_eq!(e.reason, "Validation Failed: 1: index is missing;");
        let e = run_text(&s, "{\"upsert\":{}}\n").unwrap_err();
        assert!(e
            .reason
            .contains("expected field [create], [delete], [index] or [update] but found [upsert]"));
        let e = run_text(&s, "{\"delete\":{\"_index\":\"a\",\"_id\":\"1\"}}\n{\"index\":{\"_index\":\"a\",\"_type\":\"_doc\"}}\n{}\n").unwrap_err();
        assert_eq!(
            e.reason,
            "Action/metadata line [2] contains an unknown parameter [_type]"
        );
    }

    #[test]
    fn items_in_order() {
        let s = Mutex::new(Store::new(1000, true));
        let v = run_text(
            &s,
            "{\"create\":{\"_index\":\"a\",\"_id\":\"1\"}}\n{\"x\":1}\n{\"create\":{\"_index\":\"a\",\"_id\":\"1\"}}\n{\"x\":1}\n{\"delete\":{\"_index\":\"a\",\"_id\":\"2\"}}\n{\"index\":{\"_index\":\"a\"}}\n{\"x\":\"nope\"}\n",
        )
        .unwrap_or_else(|e| panic!("{e:?}"));
        let items = v["items"].as_array().cloned().unwrap_or_default();
        let statuses: Vec<u64> = items
            .iter()
            .map(|i| {
                i.as_object()
                    .and_then(|o| o.values().next())
                    .map_or(0, |b| b["status"].as_u64().unwrap_or(0))
            })
            .collect();
        assert_eq!(statuses, vec![201, 409, 404, 400]);
        assert_eq!(v["errors"], true);
    }
}
