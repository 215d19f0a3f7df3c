"""Sends documents to Weir with the official Elasticsearch Python client (8.x), which
refuses a server that does not answer as Elasticsearch (product header, version).

usage: es_bulk.py URL TENANT MARKER
Checks info(), bulk-indexes ECS-style and Fluent-Bit-style documents with helpers.bulk,
retries one identical create bulk, and prints what the server answered.
"""
import json
import sys
import time
from datetime import datetime, timezone

from elasticsearch import Elasticsearch, helpers

url, tenant, marker = sys.argv[1], sys.argv[2], sys.argv[3]
now_ms = int(time.time() * 1000) - 60_000
def iso(ms):
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
es = Elasticsearch(url, headers={"x-scope-orgid": tenant}, request_timeout=10)
info = es.info()
assert info["version"]["number"].startswith("8."), info
actions = [
    {"_index": "logs-shop", "_source": {
        "@timestamp": iso(now_ms), "message": f"{marker} ecs order shipped",
        "log": {"level": "warn"}, "service": {"name": "shipping"},
        "kubernetes": {"namespace": "shop", "pod": {"name": "ship-1"}},
        "trace": {"id": "0af7651916cd43dd8448eb211c80319c"}, "order": {"id": 77}}},
    {"_index": "logs-shop", "_source": {
        "@timestamp": now_ms + 1, "log": f"{marker} fluent bit line", "level": "error",
        "kubernetes": {"namespace_name": "shop", "pod_name": "cart-2", "container_name": "cart"}}},
]
ok, errors = helpers.bulk(es, actions, raise_on_error=False)
print("bulk:", ok, json.dumps(errors))
assert ok == 2 and not errors, errors
# A retried create with the same bytes: Elasticsearch answers 409 for documents it holds.
body = [
    {"create": {"_index": "logs-shop", "_id": f"{marker}-1"}},
    {"@timestamp": iso(now_ms + 2), "message": f"{marker} created once"},
]
first = es.bulk(operations=body)
again = es.bulk(operations=body)
print("create:", first["items"][0]["create"]["status"], "retry:", again["items"][0]["create"]["status"])
assert first["items"][0]["create"]["status"] == 201, first
assert again["items"][0]["create"]["status"] == 409, again
delete = es.bulk(operations=[{"delete": {"_index": "logs-shop", "_id": "x"}}])
assert delete["errors"] and delete["items"][0]["delete"]["status"] == 400, delete
print("ok")
