//! Mirror encoding micro-benchmarks: the CPU a sink spends turning 5,000 committed records
//! into one request body (Elasticsearch bulk NDJSON; Loki snappy protobuf and JSON), and
//! reading an Elasticsearch bulk answer. Network and backends excluded: this is the part
//! of a drain that is Weir's own.
//!
//! `cargo bench -p weir-bench --bench mirror`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use weir_mirror::es::{encode_item, parse_response, IndexPattern};
use weir_mirror::loki::{encode, LokiMapping};
use weir_mirror::{Item, LokiFormat};
use weir_proto::v1::StoredRecord;

const N: usize = 5000;

/// Records like the load generator's: ~200-byte bodies, 16 services, ids, two labels.
fn items() -> Vec<Item> {
    (0..N)
        .map(|i| Item {
            shard: 1,
            index: 100 + (i / 500) as u64,
            offset: (i % 500) as u32,
            tenant: "default".into(),
            record: StoredRecord {
                timestamp_ns: 1_790_000_000_000_000_000 + i as i64 * 1000,
                level: 3,
                body: format!(
                    "GET /api/v1/orders/{i} 200 {}ms user=u{} region=eu-west-1 cache=miss upstream=orders-db-3 bytes=18234 agent=Mozilla/5.0 (X11; Linux x86_64) trace sampled",
                    i % 997,
                    i % 9973
                ),
                service: format!("svc{}", i % 16),
                namespace: "prod".into(),
                pod: format!("svc{}-{}", i % 16, i % 5),
                cluster: "eu1".into(),
                labels: [("team".to_string(), "core".to_string()), ("app".to_string(), format!("a{}", i % 8))].into(),
                attributes: [("order_id".to_string(), i.to_string())].into(),
                trace_id: format!("{:032x}", i * 7919),
                span_id: format!("{:016x}", i * 31),
            },
        })
        .collect()
}

fn encoding(c: &mut Criterion) {
    let items = items();
    let pattern = IndexPattern::parse("logs-{tenant}-{yyyy.MM.dd}").unwrap();
    let mapping = LokiMapping {
        stream_labels: [
            "service",
            "namespace",
            "pod",
            "cluster",
            "level",
            "labels.*",
        ]
        .map(String::from)
        .to_vec(),
        structured_metadata: ["trace_id", "span_id"].map(String::from).to_vec(),
    };
    let mut g = c.benchmark_group("mirror_encode");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("elasticsearch_bulk_5000", |b| {
        let mut out = Vec::with_capacity(8 << 20);
        b.iter(|| {
            out.clear();
            for it in &items {
                encode_item(&mut out, it, &pattern, "c0ffee00");
            }
            out.len()
        })
    });
    g.bench_function("loki_protobuf_snappy_5000", |b| {
        b.iter(|| encode(&items, &mapping, LokiFormat::Protobuf).0.len())
    });
    g.bench_function("loki_json_5000", |b| {
        b.iter(|| encode(&items, &mapping, LokiFormat::Json).0.len())
    });
    let answer = {
        let item = r#"{"create":{"_index":"logs-default-2026.11.21","_id":"c0ffee00-1-100-0","_version":1,"result":"created","_shards":{"total":2,"successful":1,"failed":0},"_seq_no":0,"_primary_term":1,"status":201}}"#;
        format!(
            r#"{{"took":30,"errors":false,"items":[{}]}}"#,
            vec![item; N].join(",")
        )
    };
    g.bench_function("elasticsearch_answer_5000", |b| {
        b.iter(|| parse_response(answer.as_bytes(), N).unwrap().len())
    });
    g.finish();
}

criterion_group!(benches, encoding);
criterion_main!(benches);
