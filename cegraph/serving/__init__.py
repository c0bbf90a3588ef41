"""A small "production" service for the demo: answers questions with one workflow version
and emits OpenTelemetry GenAI spans through the real SDK, as an instrumented service would."""

from cegraph.serving.otlp_file import OtlpJsonFileExporter
from cegraph.serving.service import Service, ingest_mapping

__all__ = ["OtlpJsonFileExporter", "Service", "ingest_mapping"]
