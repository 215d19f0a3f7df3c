//! The fake Elasticsearch over real HTTP: each test names the real behaviour it protects.

use std::time::{Duration, Instant};

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use weir_testkit::elasticsearch::{EsOptions, FakeElasticsearch, ItemFault};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn bulk(
    client: &Client,
    es: &FakeElasticsearch,
    body: &str,
) -> reqwest::Result<(StatusCode, Value)> {
    let resp = client
        .post(format!("{}/_bulk", es.url()))
        .header("Content-Type", "application/x-ndjson")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await?))
}

/// `(action, status)` of every item, in order.
fn item_statuses(v: &Value) -> Vec<(String, u64)> {
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            let (action, body) = item.as_object()?.iter().next()?;
            Some((action.clone(), body["status"].as_u64()?))
        })
        .collect()
}

fn item(v: &Value, i: usize) -> &Value {
    v["items"][i]
        .as_object()
        .and_then(|o| o.values().next())
        .unwrap_or(&Value::Null)
}

#[tokio::test]
async fn root_identifies_as_elasticsearch_8_with_product_header() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let resp = Client::new().get(es.url()).send().await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let v: Value = resp.json().await?;
    assert_eq!(v["version"]["number"], "8.15.0");
    assert_eq!(v["tagline"], "You Know, for Search");
    Ok(())
}

#[tokio::test]
async fn ndjson_without_trailing_newline_is_refused_whole() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let (status, v) = bulk(
        &Client::new(),
        &es,
        "{\"index\":{\"_index\":\"weir\"}}\n{\"message\":\"a\"}",
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(v["status"], 400);
    assert_eq!(v["error"]["type"], "illegal_argument_exception");
    assert_eq!(
        v["error"]["reason"],
        "The bulk request must be terminated by a newline [\\n]"
    );
    assert_eq!(
        v["error"]["root_cause"][0]["type"],
        "illegal_argument_exception"
    );
    assert_eq!(es.doc_count(), 0);
    assert_eq!(es.bulk_requests(), 1);
    Ok(())
}

#[tokio::test]
async fn whole_request_validation_errors_are_numbered_like_elasticsearch() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    let (status, v) = bulk(
        &client,
        &es,
        "{\"index\":{}}\n{\"a\":1}\n{\"delete\":{\"_index\":\"x\"}}\n",
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "action_request_validation_exception");
    assert_eq!(
        v["error"]["reason"],
        "Validation Failed: 1: index is missing;2: id is missing;"
    );
    let (status, v) = bulk(
        &client,
        &es,
        "{\"index\":{\"_index\":\"x\",\"_type\":\"_doc\"}}\n{}\n",
    )
    .await?;
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["reason"],
        "Action/metadata line [1] contains an unknown parameter [_type]"
    );
    let resp = client
        .post(format!("{}/_bulk", es.url()))
        .header("Content-Type", "application/x-ndjson")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["reason"], "request body is required");
    Ok(())
}

#[tokio::test]
async fn content_type_other_than_json_or_ndjson_is_406() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let resp = Client::new()
        .post(format!("{}/_bulk", es.url()))
        .header("Content-Type", "text/plain")
        .body("{\"index\":{\"_index\":\"weir\"}}\n{}\n")
        .send()
        .await?;
    assert_eq!(resp.status(), 406);
    let v: Value = resp.json().await?;
    assert_eq!(
        v,
        json!({"error": "Content-Type header [text/plain] is not supported", "status": 406})
    );
    Ok(())
}

#[tokio::test]
async fn create_twice_is_a_409_and_keeps_one_document() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    let body = "{\"create\":{\"_index\":\"weir\",\"_id\":\"a1\"}}\n{\"message\":\"first\"}\n";
    let (status, v) = bulk(&client, &es, body).await?;
    assert_eq!(status, 200);
    assert_eq!(v["errors"], false);
    assert_eq!(item(&v, 0)["result"], "created");
    assert_eq!(item(&v, 0)["status"], 201);
    assert_eq!(item(&v, 0)["_version"], 1);
    assert_eq!(
        item(&v, 0)["_shards"],
        json!({"total": 2, "successful": 1, "failed": 0})
    );

    let (status, v) = bulk(&client, &es, body).await?;
    assert_eq!(status, 200, "item failures do not fail the request");
    assert_eq!(v["errors"], true);
    let failed = item(&v, 0);
    assert_eq!(failed["status"], 409);
    assert_eq!(failed["_id"], "a1");
    assert_eq!(failed["error"]["type"], "version_conflict_engine_exception");
    assert_eq!(
        failed["error"]["reason"],
        "[a1]: version conflict, document already exists (current version [1])"
    );
    assert_eq!(failed["error"]["shard"], "0");
    assert_eq!(failed["error"]["index"], "weir");
    assert_eq!(es.doc_count(), 1);
    assert_eq!(es.docs()[0].source, json!({"message": "first"}));
    Ok(())
}

#[tokio::test]
async fn mixed_bulk_keeps_item_order_and_per_item_statuses() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    let body = concat!(
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":1}\n",
        "{\"index\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":2}\n",
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":3}\n",
        "{\"delete\":{\"_index\":\"weir\",\"_id\":\"nope\"}}\n",
        "{\"index\":{\"_index\":\"Weir\"}}\n{\"n\":4}\n",
        "{\"index\":{\"_index\":\"weir\"}}\n{\"n\":5}\n",
        "{\"update\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"doc\":{\"m\":1}}\n",
        "{\"delete\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n",
    );
    let (status, v) = bulk(&client, &es, body).await?;
    assert_eq!(status, 200);
    assert_eq!(v["errors"], true);
    assert_eq!(
        item_statuses(&v),
        vec![
            ("create".to_string(), 201),
            ("index".to_string(), 200),
            ("create".to_string(), 409),
            ("delete".to_string(), 404),
            ("index".to_string(), 400),
            ("index".to_string(), 201),
            ("update".to_string(), 200),
            ("delete".to_string(), 200),
        ]
    );
    assert_eq!(item(&v, 1)["result"], "updated");
    assert_eq!(item(&v, 1)["_version"], 2);
    assert_eq!(item(&v, 3)["result"], "not_found");
    assert_eq!(item(&v, 4)["error"]["type"], "invalid_index_name_exception");
    assert_eq!(
        item(&v, 4)["error"]["reason"],
        "Invalid index name [Weir], must be lowercase"
    );
    assert_eq!(item(&v, 4)["_id"], Value::Null);
    let generated = item(&v, 5)["_id"].as_str().unwrap_or_default();
    assert_eq!(generated.len(), 20, "auto-generated ids are 20 characters");
    assert_eq!(item(&v, 6)["_version"], 3);
    assert_eq!(item(&v, 7)["result"], "deleted");
    // Sequence numbers count every write, including the delete of a missing document.
    let seq: Vec<u64> = [0, 1, 3, 5, 6, 7]
        .iter()
        .map(|&i| item(&v, i)["_seq_no"].as_u64().unwrap_or(u64::MAX))
        .collect();
    assert_eq!(seq, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(es.doc_count(), 1);
    Ok(())
}

#[tokio::test]
async fn dotted_field_mapping_conflict_is_a_per_item_400_while_other_items_are_stored() -> TestResult
{
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    let body = concat!(
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"attributes\":{\"a\":\"text\"}}\n",
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"2\"}}\n{\"attributes\":{\"a.b\":1}}\n",
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"3\"}}\n{\"attributes\":{\"a\":{\"b\":1}}}\n",
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"4\"}}\n{\"attributes\":{\"c\":2}}\n",
    );
    let (_, v) = bulk(&client, &es, body).await?;
    assert_eq!(
        item_statuses(&v)
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        vec![201, 400, 400, 201]
    );
    assert_eq!(item(&v, 1)["error"]["type"], "document_parsing_exception");
    assert_eq!(
        item(&v, 1)["error"]["reason"],
        "[1:22] Could not dynamically add mapping for field [attributes.a.b]. Existing mapping for [attributes.a] must be of type object but found [text]."
    );
    assert_eq!(
        item(&v, 2)["error"]["reason"],
        "[1:26] failed to parse field [attributes.a] of type [text] in document with id '3'. Preview of field's value: '{b=1}'"
    );
    let ids: Vec<String> = es.docs().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, vec!["1", "4"]);
    let mapping = es.mapping("weir").unwrap_or_default();
    assert_eq!(
        mapping["properties"]["attributes"]["properties"]["a"]["type"],
        "text"
    );
    assert_eq!(
        mapping["properties"]["attributes"]["properties"]["c"]["type"],
        "long"
    );
    Ok(())
}

#[tokio::test]
async fn template_mapping_makes_a_bad_date_a_per_item_400() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    let template = json!({
        "index_patterns": ["weir-*"],
        "priority": 10,
        "template": {"mappings": {"properties": {
            "@timestamp": {"type": "date"},
            "trace_id": {"type": "keyword"}
        }}}
    });
    let resp = client
        .put(format!("{}/_index_template/weir", es.url()))
        .json(&template)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await?, json!({"acknowledged": true}));
    let body = concat!(
        "{\"create\":{\"_index\":\"weir-2026.01.01\"}}\n{\"@timestamp\":\"2026-01-01T00:00:00Z\",\"trace_id\":\"abc\"}\n",
        "{\"create\":{\"_index\":\"weir-2026.01.01\",\"_id\":\"bad\"}}\n{\"@timestamp\":\"yesterday\"}\n",
        "{\"create\":{\"_index\":\"weir-2026.01.01\",\"_id\":\"obj\"}}\n{\"trace_id\":{\"x\":1}}\n",
        "{\"create\":{\"_index\":\"weir-2026.01.01\"}}\n{\"@timestamp\":1767225600000}\n",
    );
    let (_, v) = bulk(&client, &es, body).await?;
    assert_eq!(
        item_statuses(&v)
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        vec![201, 400, 400, 201]
    );
    assert_eq!(
        item(&v, 1)["error"]["reason"],
        "[1:15] failed to parse field [@timestamp] of type [date] in document with id 'bad'. Preview of field's value: 'yesterday'"
    );
    assert_eq!(item(&v, 2)["error"]["type"], "document_parsing_exception");
    assert_eq!(es.templates().len(), 1);
    assert_eq!(es.templates()[0].1, template);

    let got: Value = client
        .get(format!("{}/_index_template/weir", es.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got["index_templates"][0]["name"], "weir");
    let missing = client
        .get(format!("{}/_index_template/nope", es.url()))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let v: Value = missing.json().await?;
    assert_eq!(v["error"]["type"], "resource_not_found_exception");
    let mapping: Value = client
        .get(format!("{}/weir-2026.01.01/_mapping", es.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        mapping["weir-2026.01.01"]["mappings"]["properties"]["trace_id"]["type"],
        "keyword"
    );
    let count: Value = client
        .get(format!("{}/weir-2026.01.01/_count", es.url()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(count["count"], 2);
    Ok(())
}

#[tokio::test]
async fn builtin_logs_template_makes_data_streams_that_only_take_create() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let body = concat!(
        "{\"index\":{\"_index\":\"logs-weir-default\"}}\n{\"@timestamp\":\"2026-01-01T00:00:00Z\",\"message\":\"a\"}\n",
        "{\"create\":{\"_index\":\"logs-weir-default\"}}\n{\"@timestamp\":\"2026-01-01T00:00:00Z\",\"message\":\"b\"}\n",
        "{\"create\":{\"_index\":\"logs-weir-default\"}}\n{\"message\":\"no timestamp\"}\n",
    );
    let (_, v) = bulk(&Client::new(), &es, body).await?;
    assert_eq!(
        item_statuses(&v)
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        vec![400, 201, 400]
    );
    assert_eq!(
        item(&v, 0)["error"]["reason"],
        "only write ops with an op_type of create are allowed in data streams"
    );
    let backing = item(&v, 1)["_index"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(backing.starts_with(".ds-logs-weir-default-"), "{backing}");
    assert!(item(&v, 2)["error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("data stream timestamp field [@timestamp] is missing"));
    assert_eq!(es.docs_in("logs-weir-default").len(), 1);
    let mapping = es.mapping("logs-weir-default").unwrap_or_default();
    assert_eq!(mapping["properties"]["message"]["type"], "match_only_text");
    Ok(())
}

#[tokio::test]
async fn fail_requests_429_sends_retry_after_then_recovers() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    es.fail_requests(1, 429, Some(2));
    let body = "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":1}\n";
    let resp = client
        .post(format!("{}/_bulk", es.url()))
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert_eq!(resp.headers()["x-elastic-product"], "Elasticsearch");
    let v: Value = resp.json().await?;
    assert_eq!(v["status"], 429);
    assert_eq!(v["error"]["type"], "es_rejected_execution_exception");
    assert_eq!(es.doc_count(), 0);

    let (status, v) = bulk(&client, &es, body).await?;
    assert_eq!(status, 200);
    assert_eq!(v["errors"], false);
    assert_eq!(es.doc_count(), 1);
    assert_eq!(es.bulk_requests(), 2);
    Ok(())
}

#[tokio::test]
async fn fail_items_injects_per_item_statuses() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    es.fail_items(|source| match source["message"].as_str() {
        Some("busy") => Some(ItemFault::rejected()),
        Some("bad") => Some(ItemFault::mapper_parsing("[1:12] injected")),
        _ => None,
    });
    let body = concat!(
        "{\"create\":{\"_index\":\"weir\"}}\n{\"message\":\"busy\"}\n",
        "{\"create\":{\"_index\":\"weir\"}}\n{\"message\":\"fine\"}\n",
        "{\"create\":{\"_index\":\"weir\"}}\n{\"message\":\"bad\"}\n",
    );
    let client = Client::new();
    let (_, v) = bulk(&client, &es, body).await?;
    assert_eq!(
        item_statuses(&v)
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        vec![429, 201, 400]
    );
    assert_eq!(
        item(&v, 0)["error"]["type"],
        "es_rejected_execution_exception"
    );
    es.clear_item_faults();
    let (_, v) = bulk(&client, &es, body).await?;
    assert_eq!(v["errors"], false);
    assert_eq!(es.doc_count(), 4);
    Ok(())
}

#[tokio::test]
async fn down_resets_connections_then_comes_back_up() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    // A pooled keep-alive connection exists before the server goes down.
    assert_eq!(client.get(es.url()).send().await?.status(), 200);
    es.set_down(true);
    let err = client.get(es.url()).send().await;
    assert!(err.is_err(), "a down server must not answer: {err:?}");
    let fresh = Client::new().get(es.url()).send().await;
    assert!(fresh.is_err(), "new connections are reset too");
    es.set_down(false);
    assert_eq!(client.get(es.url()).send().await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn latency_delays_every_answer() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    es.set_latency(Duration::from_millis(250));
    let started = Instant::now();
    assert_eq!(Client::new().get(es.url()).send().await?.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(250));
    Ok(())
}

#[tokio::test]
async fn admin_api_drives_faults_from_another_process() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let client = Client::new();
    let admin = |path: &str| format!("{}/_testkit/{path}", es.url());
    let resp = client
        .post(admin("fail"))
        .json(&json!({"requests": 1, "status": 503, "retry_after_secs": null}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body = "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":1}\n";
    let (status, v) = bulk(&client, &es, body).await?;
    assert_eq!(status, 503);
    assert_eq!(v["error"]["type"], "cluster_block_exception");
    let (status, _) = bulk(&client, &es, body).await?;
    assert_eq!(status, 200);

    let docs: Value = client.get(admin("docs")).send().await?.json().await?;
    assert_eq!(docs[0]["id"], "1");
    assert_eq!(docs[0]["source"], json!({"n": 1}));

    // The answer to "down" still arrives; then the server is down until for_ms passes.
    let resp = client
        .post(admin("down"))
        .json(&json!({"down": true, "for_ms": 300}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert!(client.get(es.url()).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.get(es.url()).send().await?.status(), 200);
    Ok(())
}

#[tokio::test]
async fn authentication_is_enforced_when_configured() -> TestResult {
    let es = FakeElasticsearch::start_with(EsOptions {
        basic_auth: Some(("elastic".into(), "changeme".into())),
        api_key: Some("aWQ6a2V5".into()),
        ..EsOptions::default()
    })
    .await?;
    let client = Client::new();
    let resp = client.get(es.url()).send().await?;
    assert_eq!(resp.status(), 401);
    let challenges: Vec<&str> = resp
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        challenges,
        vec![r#"Basic realm="security", charset="UTF-8""#, "ApiKey"]
    );
    let v: Value = resp.json().await?;
    assert_eq!(v["error"]["type"], "security_exception");
    assert_eq!(
        v["error"]["reason"],
        "missing authentication credentials for REST request [/]"
    );
    let wrong = client
        .get(es.url())
        .basic_auth("elastic", Some("wrong"))
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let right = client
        .get(es.url())
        .basic_auth("elastic", Some("changeme"))
        .send()
        .await?;
    assert_eq!(right.status(), 200);
    let key = client
        .get(es.url())
        .header("Authorization", "ApiKey aWQ6a2V5")
        .send()
        .await?;
    assert_eq!(key.status(), 200);
    Ok(())
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let url = es.url();
    es.shutdown().await;
    assert!(Client::new().get(&url).send().await.is_err());

    let es = FakeElasticsearch::start().await?;
    let url = es.url();
    let client = Client::new();
    assert_eq!(client.get(&url).send().await?.status(), 200);
    drop(es);
    assert!(
        client.get(&url).send().await.is_err(),
        "pooled connections die with the handle"
    );
    assert!(Client::new().get(&url).send().await.is_err());
    Ok(())
}

#[tokio::test]
async fn filter_path_keeps_only_failed_items_like_elasticsearch() -> TestResult {
    let es = FakeElasticsearch::start().await?;
    let body = concat!(
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":1}\n",
        "{\"create\":{\"_index\":\"weir\",\"_id\":\"1\"}}\n{\"n\":1}\n",
    );
    let v: Value = Client::new()
        .post(format!(
            "{}/_bulk?filter_path=errors,items.*.error",
            es.url()
        ))
        .header("Content-Type", "application/x-ndjson")
        .body(body)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["errors"], true);
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        v["items"][0]["create"]["error"]["type"],
        "version_conflict_engine_exception"
    );
    assert!(v.get("took").is_none());
    Ok(())
}

/// `keep_sources: false` is for long benchmarks: ids, 409s on `create` and counts must be
/// exactly the default's, only without the sources.
#[tokio::test]
async fn count_only_mode_still_answers_409_for_an_existing_id() -> TestResult {
    let es = FakeElasticsearch::start_with(EsOptions {
        keep_sources: false,
        ..EsOptions::default()
    })
    .await?;
    let client = Client::new();
    let body = "{\"create\":{\"_index\":\"weir\",\"_id\":\"a1\"}}\n{\"message\":\"first\"}\n\
                {\"create\":{\"_index\":\"weir\",\"_id\":\"a2\"}}\n{\"message\":\"second\"}\n";
    let (status, v) = bulk(&client, &es, body).await?;
    assert_eq!(status, 200);
    assert_eq!(
        item_statuses(&v),
        [("create".into(), 201), ("create".into(), 201)]
    );
    let (_, v) = bulk(&client, &es, body).await?;
    assert_eq!(
        item_statuses(&v),
        [("create".into(), 409), ("create".into(), 409)]
    );
    assert_eq!(es.doc_count(), 2);
    assert_eq!(es.docs()[0].source, Value::Null, "sources are not kept");
    Ok(())
}
