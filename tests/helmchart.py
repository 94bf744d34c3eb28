"""The Helm chart as the tests see it: rendered through Helm's own library (helm-python-sdk)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "apizee-kafka-bridge"
DASHBOARD = CHART / "dashboards" / "apizee-kafka-bridge.json"
RELEASE = "apizee-kafka-bridge"
NAMESPACE = "apizee"
# The series selector the chart's alerts use by default (what its ServiceMonitor yields).
JOB = f"{RELEASE}-admin"


def render_files(values: dict[str, Any]) -> dict[str, str]:
    """Template path -> rendered text, as `helm install` would render them."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The chart's manifests for these values."""
    docs = []
    for path, text in sorted(render_files(values).items()):
        if not path.endswith("NOTES.txt"):
            docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def alert_groups(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rule groups of the PrometheusRule rendered with these values (rule-file shape)."""
    (rule,) = [d for d in render(values) if d["kind"] == "PrometheusRule"]
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups
