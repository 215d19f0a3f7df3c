"""Searches Weir with the official Elasticsearch Python client (8.x), which refuses a
server that does not answer as Elasticsearch (product header, version).

usage: es_search.py URL TENANT MARKER
Bulk-indexes documents into logs-py, then searches them with query_string and a
date_histogram aggregation, and checks hits, totals and buckets against what it sent.
"""
import sys
import time

from elasticsearch import Elasticsearch, helpers

url, tenant, marker = sys.argv[1], sys.argv[2], sys.argv[3]
es = Elasticsearch(url, headers={"x-scope-orgid": tenant}, request_timeout=10)
minute = 60_000
base = (int(time.time() * 1000) - 20 * minute) // minute * minute
levels = ["info", "error", "warn", "error", "error"]
docs = [
    {"_index": "logs-py", "_source": {
        "@timestamp": base + i * 20_000, "message": f"{marker} request {i}",
        "log": {"level": levels[i % len(levels)]}, "service": {"name": "py"},
        "http": {"status": 500 if i % 2 else 200}}}
    for i in range(12)
]
ok, errors = helpers.bulk(es, docs, raise_on_error=False)
assert ok == len(docs) and not errors, errors

deadline = time.time() + 10
while True:
    r = es.search(index="logs-py", query={"query_string": {"query": marker}}, size=0)
    if r["hits"]["total"]["value"] == len(docs) or time.time() > deadline:
        break
    time.sleep(0.05)
assert r["hits"]["total"]["value"] == len(docs), r

errors_sent = [d["_source"] for d in docs if d["_source"]["log"]["level"] == "error"]
r = es.search(
    index="logs-*",
    query={"bool": {"filter": [
        {"range": {"@timestamp": {"gte": base, "lt": base + 10 * minute, "format": "epoch_millis"}}},
        {"query_string": {"query": f"message:{marker} AND log.level:ERROR", "analyze_wildcard": True}},
    ]}},
    aggs={"per_minute": {"date_histogram": {
        "field": "@timestamp", "fixed_interval": "1m", "min_doc_count": 0,
        "extended_bounds": {"min": base, "max": base + 4 * minute}}}},
    sort=[{"@timestamp": {"order": "asc"}}],
    size=100,
)
print("total:", r["hits"]["total"], "buckets:", r["aggregations"]["per_minute"]["buckets"])
assert r["hits"]["total"]["value"] == len(errors_sent), r["hits"]["total"]
hits = r["hits"]["hits"]
assert [h["_source"]["message"] for h in hits] == [d["message"] for d in errors_sent], hits
assert all(h["_index"] == "logs-py" for h in hits), hits
assert hits[0]["_source"]["http"]["status"] in ("200", "500"), hits[0]
want = {}
for d in errors_sent:
    key = d["@timestamp"] // minute * minute
    want[key] = want.get(key, 0) + 1
got = {b["key"]: b["doc_count"] for b in r["aggregations"]["per_minute"]["buckets"]}
assert got == {base + m * minute: want.get(base + m * minute, 0) for m in range(5)}, got

# An unknown query type is an Elasticsearch error the client raises as BadRequestError.
try:
    es.search(index="logs-py", query={"fuzzy": {"message": "x"}})
    raise AssertionError("fuzzy was accepted")
except Exception as e:  # elasticsearch.BadRequestError
    assert type(e).__name__ == "BadRequestError", repr(e)
    assert "unknown query [fuzzy]" in str(e), str(e)
print("ok")
