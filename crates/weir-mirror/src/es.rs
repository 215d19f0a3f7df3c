//! Elasticsearch: `_bulk` bodies, per-item results, the index template.
//!
//! Each record becomes a `create` of a document whose `_id` is its log position (see
//! [`Item::id`]), so sending it twice (a retry, a replay after failover) answers 409 for
//! the copy that already exists instead of storing a duplicate.
//!
//! Document shape:
//! ```json
//! {"@timestamp":"2026-11-21T19:04:21.123456789Z","level":"error","message":"...",
//!  "service":"api","namespace":"prod","pod":"api-1","cluster":"eu1",
//!  "trace_id":"...","span_id":"...","tenant":"default",
//!  "labels":{"team":"core"},"attributes":{"order_id":"42"}}
//! ```
//! Empty fields are left out.

use serde_json::{json, Value};

use crate::item::{level_name, rfc3339, Item};
use crate::sink::ItemResult;

/// A parsed index name pattern.
#[derive(Clone, Debug)]
pub struct IndexPattern {
    parts: Vec<Part>,
}

#[derive(Clone, Debug)]
enum Part {
    Lit(String),
    Tenant,
    /// The record's UTC date: separator, and whether month and day are shown.
    Date {
        sep: char,
        month: bool,
        day: bool,
    },
}

impl IndexPattern {
    /// Parses `logs-{tenant}-{yyyy.MM.dd}`-style patterns.
    ///
    /// # Errors
    /// Names an unknown `{token}`, an unclosed brace, or upper-case literal text (index
    /// names must be lower case).
    pub fn parse(s: &str) -> Result<IndexPattern, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in index pattern {s:?}"))?
                + open;
            let token = &rest[open + 1..close];
            parts.push(match token {
                "tenant" => Part::Tenant,
                "yyyy.MM.dd" => Part::Date { sep: '.', month: true, day: true },
                "yyyy-MM-dd" => Part::Date { sep: '-', month: true, day: true },
                "yyyy.MM" => Part::Date { sep: '.', month: true, day: false },
                "yyyy" => Part::Date { sep: '.', month: false, day: false },
                other => {
                    return Err(format!(
                        "unknown token {{{other}}} in index pattern {s:?}; known: {{tenant}}, {{yyyy.MM.dd}}, {{yyyy-MM-dd}}, {{yyyy.MM}}, {{yyyy}}"
                    ))
                }
            });
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        for p in &parts {
            if let Part::Lit(l) = p {
                if l.chars()
                    .any(|c| c.is_ascii_uppercase() || "\\/*?\"<>| ,#:".contains(c))
                {
                    return Err(format!(
                        "index pattern {s:?} has {l:?}: Elasticsearch index names are lower case without \\ / * ? \" < > | space , # :"
                    ));
                }
            }
        }
        if parts.is_empty() {
            return Err("index pattern is empty".into());
        }
        Ok(IndexPattern { parts })
    }

    /// The index for a record of `tenant` at `timestamp_ns` (UTC date). The tenant is
    /// lower-cased and characters not allowed in index names become `_`.
    pub fn render(&self, tenant: &str, timestamp_ns: i64) -> String {
        let date = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(timestamp_ns))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                Part::Tenant => out.extend(tenant.chars().map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c.to_ascii_lowercase()
                    } else {
                        '_'
                    }
                })),
                Part::Date { sep, month, day } => {
                    out.push_str(&format!("{:04}", date.year()));
                    if *month {
                        out.push_str(&format!("{sep}{:02}", u8::from(date.month())));
                    }
                    if *day {
                        out.push_str(&format!("{sep}{:02}", date.day()));
                    }
                }
            }
        }
        out
    }

    /// The glob matching every index this pattern renders (`logs-*`), for the template.
    pub fn glob(&self) -> String {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(l) => out.push_str(l),
                _ if out.ends_with('*') => {}
                _ => out.push('*'),
            }
        }
        out
    }
}

/// Appends the `create` action and source lines of `item` to `out`.
///
/// Serialised from borrowed, typed structs (not through `serde_json::Value`): this runs
/// for every record of every delivery (benches/benches/mirror.rs).
pub fn encode_item(out: &mut Vec<u8>, item: &Item, pattern: &IndexPattern, cluster: &str) {
    #[derive(serde::Serialize)]
    struct Action<'a> {
        create: Meta<'a>,
    }
    #[derive(serde::Serialize)]
    struct Meta<'a> {
        _index: &'a str,
        _id: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        #[serde(rename = "@timestamp")]
        timestamp: &'a str,
        level: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        service: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        namespace: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        pod: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        cluster: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        trace_id: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        span_id: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        tenant: &'a str,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        labels: &'a std::collections::BTreeMap<String, String>,
        #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
        attributes: &'a std::collections::BTreeMap<String, String>,
    }
    let r = &item.record;
    let index = pattern.render(&item.tenant, r.timestamp_ns);
    let id = item.id(cluster);
    // Serialising to a Vec cannot fail (no maps with non-string keys, no I/O).
    let _ = serde_json::to_writer(
        &mut *out,
        &Action {
            create: Meta {
                _index: &index,
                _id: &id,
            },
        },
    );
    out.push(b'\n');
    let ts = rfc3339(r.timestamp_ns);
    let _ = serde_json::to_writer(
        &mut *out,
        &Doc {
            timestamp: &ts,
            level: level_name(r.level),
            message: &r.body,
            service: &r.service,
            namespace: &r.namespace,
            pod: &r.pod,
            cluster: &r.cluster,
            trace_id: &r.trace_id,
            span_id: &r.span_id,
            tenant: &item.tenant,
            labels: &r.labels,
            attributes: &r.attributes,
        },
    );
    out.push(b'\n');
}

/// Reads a `_bulk` answer (status 200): one result per item in request order.
///
/// 201/200 done; 409 on `create` done (the document exists: a replay); 429 and 5xx
/// retried; any other status rejected with Elasticsearch's error type and reason.
///
/// # Errors
/// The body is not a bulk answer for `n` items (then nothing can be trusted and the whole
/// request is retried).
pub fn parse_response(body: &[u8], n: usize) -> Result<Vec<ItemResult>, String> {
    // Typed, so that only what is read is decoded (every other field is skipped).
    #[derive(serde::Deserialize)]
    struct Answer {
        items: Vec<std::collections::HashMap<String, ItemBody>>,
    }
    #[derive(serde::Deserialize)]
    struct ItemBody {
        status: u64,
        #[serde(default)]
        error: Option<ErrorBody>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "type", default)]
        ty: Option<String>,
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        caused_by: Option<Box<ErrorBody>>,
    }
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| format!("bulk answer is not one: {e}"))?;
    if answer.items.len() != n {
        return Err(format!(
            "bulk answer has {} items for {n} actions",
            answer.items.len()
        ));
    }
    answer
        .items
        .into_iter()
        .map(|it| {
            let (op, body) = it.into_iter().next().ok_or("bulk item is empty")?;
            let status = body.status;
            let reason = || {
                let e = body.error.as_ref();
                let ty = e.and_then(|e| e.ty.as_deref()).unwrap_or("unknown");
                let why = e.and_then(|e| e.reason.as_deref()).unwrap_or("");
                match e
                    .and_then(|e| e.caused_by.as_ref())
                    .and_then(|c| c.reason.as_deref())
                {
                    Some(c) => format!("{status} {ty}: {why} (caused by: {c})"),
                    None => format!("{status} {ty}: {why}"),
                }
            };
            Ok(match status {
                200 | 201 => ItemResult::Done,
                409 if op == "create" => ItemResult::Done,
                429 | 500..=599 => ItemResult::Retry(reason()),
                _ => ItemResult::Reject(reason()),
            })
        })
        .collect()
}

/// The index template installed at start: types that dynamic mapping would guess wrong
/// (the timestamp as a date, level and the standard fields as exact keywords).
pub fn template(pattern: &IndexPattern) -> Value {
    let kw = json!({"type": "keyword"});
    json!({
        "index_patterns": [pattern.glob()],
        "priority": 200,
        "_meta": {"managed_by": "weir"},
        "template": {"mappings": {"properties": {
            "@timestamp": {"type": "date"},
            "level": kw, "service": kw, "namespace": kw, "pod": kw, "cluster": kw,
            "trace_id": kw, "span_id": kw, "tenant": kw,
            "message": {"type": "text"},
        }}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1::StoredRecord;

    fn item() -> Item {
        Item {
            shard: 1,
            index: 9,
            offset: 2,
            tenant: "Acme Corp".into(),
            record: StoredRecord {
                timestamp_ns: 1_700_000_000_000_000_000,
                level: 4,
                body: "disk \"slow\"\nsecond line".into(),
                service: "db".into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn patterns_render_tenant_and_utc_date() {
        let p = IndexPattern::parse("logs-{tenant}-{yyyy.MM.dd}").unwrap();
        assert_eq!(
            p.render("Acme Corp", 1_700_000_000_000_000_000),
            "logs-acme_corp-2023.11.14"
        );
        assert_eq!(p.glob(), "logs-*-*");
        assert_eq!(IndexPattern::parse("weir").unwrap().glob(), "weir");
    }

    #[test]
    fn upper_case_pattern_text_is_refused() {
        assert!(IndexPattern::parse("Logs-{tenant}")
            .unwrap_err()
            .contains("lower case"));
        assert!(IndexPattern::parse("logs-{tenant")
            .unwrap_err()
            .contains("unclosed"));
    }

    #[test]
    fn bulk_lines_are_one_action_and_one_source_each_newline_terminated() {
        let p = IndexPattern::parse("logs-{tenant}").unwrap();
        let mut out = Vec::new();
        encode_item(&mut out, &item(), &p, "c0");
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "the newline in the body is escaped: {text}");
        let action: Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(
            action,
            json!({"create": {"_index": "logs-acme_corp", "_id": "c0-1-9-2"}})
        );
        let doc: Value = serde_json::from_str(lines[1]).unwrap();
        assert_eq!(doc["level"], "warn");
        assert_eq!(doc["@timestamp"], "2023-11-14T22:13:20Z");
        assert!(doc.get("pod").is_none(), "empty fields are left out");
    }

    #[test]
    fn item_statuses_map_to_done_retry_and_reject() {
        let body = json!({"took": 1, "errors": true, "items": [
            {"create": {"status": 201}},
            {"create": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "exists"}}},
            {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}},
            {"create": {"status": 400, "error": {"type": "document_parsing_exception", "reason": "bad", "caused_by": {"reason": "not a date"}}}},
            {"index": {"status": 409, "error": {"type": "version_conflict_engine_exception", "reason": "seq"}}},
        ]});
        let r = parse_response(body.to_string().as_bytes(), 5).unwrap();
        assert_eq!(r[0], ItemResult::Done);
        assert_eq!(r[1], ItemResult::Done, "409 on create: already there");
        assert!(matches!(&r[2], ItemResult::Retry(_)));
        assert_eq!(
            r[3],
            ItemResult::Reject(
                "400 document_parsing_exception: bad (caused by: not a date)".into()
            )
        );
        assert!(
            matches!(&r[4], ItemResult::Reject(_)),
            "409 on index is a real conflict"
        );
    }

    #[test]
    fn an_answer_with_the_wrong_item_count_is_not_trusted() {
        let body = json!({"errors": false, "items": [{"create": {"status": 201}}]});
        assert!(parse_response(body.to_string().as_bytes(), 2)
            .unwrap_err()
            .contains("1 items for 2"));
    }
}
