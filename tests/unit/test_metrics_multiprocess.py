"""`edm serve --workers N` (docs/operations.md#metrics): the server processes share one port, so a scrape reaches any
one of them, and each must answer the sum of all. `shared_metrics` gives them prometheus-client's multiprocess
directory for the server's lifetime; what two processes count there is what a scrape reads back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import generate_latest

from edm.cli.ops import MULTIPROCESS_DIR, shared_metrics
from edm.metrics.exposition import _process_registry

COUNT = """
from edm import telemetry
telemetry.HTTP_REQUESTS.labels("GET", "/healthz", "200").inc({n})
telemetry.count_attempts([{{"service_id": 7, "outcome": "accepted", "duration_ms": {n}}}])
"""


def test_two_server_processes_add_up_in_one_scrape() -> None:
    assert MULTIPROCESS_DIR not in os.environ
    with shared_metrics(2):
        directory = Path(os.environ[MULTIPROCESS_DIR])
        assert directory.is_dir() and not list(directory.iterdir())
        src = str(Path(__file__).resolve().parents[2] / "src")
        for n in (3, 4):  # two server processes, each counting its own requests
            subprocess.run(
                [sys.executable, "-c", COUNT.format(n=n)],
                env={**os.environ, "PYTHONPATH": src},
                check=True,
                timeout=60,
            )
        text = generate_latest(_process_registry()).decode()
    assert not directory.exists(), "the directory goes with the server"
    assert MULTIPROCESS_DIR not in os.environ
    assert 'edm_http_requests_total{method="GET",route="/healthz",status="200"} 7.0' in text
    assert 'edm_sends_total{outcome="accepted",service_id="7"} 2.0' in text
    assert 'edm_send_latency_seconds_sum{service_id="7"} 0.007' in text


def test_one_server_process_keeps_its_metrics_in_memory() -> None:
    with shared_metrics(1):
        assert MULTIPROCESS_DIR not in os.environ
