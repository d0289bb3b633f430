"""`index build/update --metrics-file`: a run's figures in the Prometheus text format, for
node_exporter's textfile collector (or `-` for stdout, e.g. to pipe to a Pushgateway)."""
from __future__ import annotations

import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest, write_to_textfile

from indexer.build import BuildReport


def build_registry(report: BuildReport, finished: float | None = None) -> CollectorRegistry:
    """One gauge per figure of the report, in a registry of its own."""
    reg = CollectorRegistry()
    mode = report.mode

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(f"shopsearch_index_build_{name}", doc, registry=reg).set(value)

    info = Gauge("shopsearch_index_build_info", "The build this run published", ["build_id", "model", "index_type", "mode"],
                 registry=reg)
    info.labels(report.build_id, report.model, report.index_type, mode).set(1)
    gauge("vectors", "Vectors in the published build", report.vectors)
    gauge("up_to_date", "1 when the serving build was up to date and nothing was published", int(report.up_to_date))
    gauge("images_embedded", "Images embedded by this run", report.embedded)
    gauge("images_reused", "Vectors reused from the cache or the previous build", report.reused)
    gauge("images_failed", "Images that could not be indexed", len(report.failed))
    gauge("duration_seconds", "Wall time of the run", report.seconds)
    gauge("images_per_second", "Embedding throughput of the run", report.images_per_s)
    gauge("last_success_timestamp_seconds", "When the run published its build (Unix time)",
          finished if finished is not None else time.time())
    return reg


def write_build_metrics(report: BuildReport, target: str) -> str | None:
    """Write the figures to `target` atomically (the collector never reads half a file);
    with "-" return them as text for the caller to print."""
    reg = build_registry(report)
    if target == "-":
        return generate_latest(reg).decode()
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(target, reg)
    return None
