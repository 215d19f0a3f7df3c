"""Sends log records to Weir with the OpenTelemetry Python SDK's OTLP/HTTP exporter
(opentelemetry-exporter-otlp-proto-http), as an instrumented application would.

usage: otlp_http.py URL TENANT MARKER
Emits three records through the SDK's logging handler, flushes, and exits 0 only if the
exporter reported success.
"""
import logging
import sys

from opentelemetry._logs import set_logger_provider
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

url, tenant, marker = sys.argv[1], sys.argv[2], sys.argv[3]
exporter = OTLPLogExporter(endpoint=f"{url}/v1/logs", headers={"x-weir-tenant": tenant}, timeout=10)
results = []
original = exporter.export
def export(batch):
    r = original(batch)
    results.append(r)
    return r
exporter.export = export
provider = LoggerProvider(resource=Resource.create({
    "service.name": "checkout-py", "k8s.namespace.name": "shop", "k8s.pod.name": "checkout-1",
}))
set_logger_provider(provider)
provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
log = logging.getLogger("weir-test")
log.setLevel(logging.DEBUG)
log.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
log.info("%s payment accepted", marker)
log.warning("%s card expires soon", marker)
log.error("%s payment declined", marker, extra={"order_id": "8812"})
provider.force_flush()
provider.shutdown()
names = [getattr(r, "name", str(r)) for r in results]
print("export results:", names)
sys.exit(0 if results and all(n == "SUCCESS" for n in names) else 1)
