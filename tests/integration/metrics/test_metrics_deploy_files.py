"""The example alert rules and Grafana dashboard in deploy/ (docs/operations.md#metrics) use only series EDM exports,
and Prometheus's own `promtool` accepts them: the rules check, their unit tests pass (deploy/prometheus/
edm-alerts.test.yml: each alert fires when it should and not otherwise), and every dashboard query parses. Debian's
`prometheus` package brings promtool; without it those checks are skipped, the others still run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edm.app import create_app
from tests.helpers import settings_for

pytestmark = pytest.mark.any_database

DEPLOY = Path(__file__).resolve().parents[3] / "deploy"
ALERTS = DEPLOY / "prometheus" / "edm-alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "edm-alerts.test.yml"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "edm-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
NAME = re.compile(r"\bedm_[a-z0-9_]+")
REQUIRED_ALERTS = {"EdmQueueStalled", "EdmNoLiveWorker", "EdmServiceFrozen", "EdmBounceRateHigh"}


def _alert_expressions() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


async def _exported(db_url: str, engine: Any) -> set[str]:
    app = create_app(settings_for(db_url), engine=engine)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://edm.test") as client:
            text = (await client.get("/metrics")).text
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES.get(family.type, ("",))
    }


async def test_the_rules_and_the_dashboard_use_only_exported_series(db_url: str, engine: Any) -> None:
    exported = await _exported(db_url, engine)
    alerts = _alert_expressions()
    assert REQUIRED_ALERTS <= set(alerts)
    queries = _dashboard_expressions()
    assert len(queries) >= 20
    used = {name for expr in [*alerts.values(), *queries] for name in NAME.findall(expr)}
    assert used - exported == set()
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_promtool_accepts_the_rules_their_tests_the_scrape_config_and_the_dashboard_queries(tmp_path: Path) -> None:
    promtool = str(shutil.which("promtool"))
    checks = (
        ["check", "rules", str(ALERTS)],
        ["test", "rules", str(ALERT_TESTS)],
        ["check", "config", "--syntax-only", str(SCRAPE_CONFIG)],  # its token file exists only on a real host
    )
    for command in checks:
        result = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=60, cwd=ALERTS.parent)
        assert result.returncode == 0, result.stdout + result.stderr
    # Each dashboard query as a recording rule: promtool parses it as Prometheus would.
    recorded = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"edm:q{i}", "expr": q} for i, q in enumerate(_dashboard_expressions())],
            }
        ]
    }
    queries = tmp_path / "dashboard-queries.yml"
    queries.write_text(yaml.safe_dump(recorded))
    result = subprocess.run([promtool, "check", "rules", str(queries)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
