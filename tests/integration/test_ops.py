"""Operations: the chart's alert rules pass promtool and fire in their scenarios, every metric
the dashboard and the rules name is in a running bridge's /metrics, and a real Prometheus
scrapes the bridge, evaluates the rules and answers the dashboard's queries.

promtool and prometheus come from Debian's `prometheus` package (`make ops-tools`); the tests
that need them skip, saying so, where it is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from bridge import metrics
from bridge.devtools.devbroker import free_port
from tests.helmchart import DASHBOARD, JOB, NAMESPACE, alert_groups

pytestmark = pytest.mark.integration

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
_INSTALL_HINT = "Debian package prometheus not installed (`make ops-tools` installs it as root)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"no promtool: {_INSTALL_HINT}")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=f"no prometheus: {_INSTALL_HINT}")

ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
TOKEN = "ops-test-token-0123456789"
START_TIMEOUT = 30.0
SCRAPE_TIMEOUT = 20.0

# The rules as deployed without the poller (what the bridge below runs) and with it.
RULES_POLLER_OFF: dict[str, Any] = {"prometheusRule": {"enabled": True}}
RULES_POLLER_ON: dict[str, Any] = {
    "prometheusRule": {"enabled": True},
    "config": {"apizee": {"base_url": "https://apizee.example.com"}},
    "secrets": {"apizeeToken": "token"},
}
# Grafana's variables, as "All" and a scrape interval of seconds resolve them.
DASHBOARD_VARIABLES = {
    "$namespace": ".*",
    "$job": ".*",
    "$instance": ".*",
    "$__rate_interval": "1m",
}

T = TypeVar("T")


def _eventually(probe: Callable[[], T | None], within: float, what: str) -> T:
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if result is not None:
                return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last error: {last!r}")


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _rules_file(directory: Path, values: dict[str, Any], *, annotations: bool = True) -> Path:
    groups = alert_groups(values)
    if not annotations:
        for group in groups:
            for rule in group["rules"]:
                rule.pop("annotations")
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return path


def _rule_exprs(values: dict[str, Any]) -> list[str]:
    return [r["expr"] for g in alert_groups(values) for r in g["rules"]]


def _dashboard_exprs() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


# -- a running bridge and a Prometheus that scrapes it ------------------------------------


@dataclass
class Bridge:
    process: subprocess.Popen[bytes]
    public_port: int
    admin_port: int
    log: Path

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/metrics"

    def metrics(self) -> str:
        status, body = _get(self.metrics_url)
        assert status == 200
        return body.decode()

    def post_webhook(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.public_port}/webhooks/apizee",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-Webhook-Token": TOKEN},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@contextlib.contextmanager
def _stopping(process: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def bridge(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """`apizee-bridge run` as deployed (single worker, no poller), on loopback ports."""
    public, admin = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("BRIDGE_")}
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap,
        BRIDGE_KAFKA_TOPIC_PREFIX=f"test.{uuid.uuid4().hex[:8]}",
        BRIDGE_KAFKA_TOPIC_PARTITIONS="1",
        BRIDGE_INGRESS_HOST="127.0.0.1",
        BRIDGE_INGRESS_PORT=str(public),
        BRIDGE_ADMIN_HOST="127.0.0.1",
        BRIDGE_ADMIN_PORT=str(admin),
        BRIDGE_AUTH_TOKEN=TOKEN,
        BRIDGE_LOG_LEVEL="WARNING",
    )
    script = Path(sys.executable).with_name("apizee-bridge")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "bridge.cli"]
    log = tmp_path_factory.mktemp("bridge") / "bridge.log"
    with log.open("wb") as out:
        process = subprocess.Popen([*command, "run"], env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Bridge(process, public, admin, log)
    with _stopping(process):

        def ready() -> bool | None:
            assert process.poll() is None, f"bridge exited: {running.log_tail()}"
            status, _ = _get(f"http://127.0.0.1:{admin}/readyz", timeout=1.0)
            return True if status == 200 else None

        _eventually(ready, START_TIMEOUT, f"the bridge to be ready; log: {running.log_tail()}")
        yield running


@dataclass
class Prometheus:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def query(self, promql: str) -> dict[str, Any]:
        status, body = _get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        answer: dict[str, Any] = json.loads(body)
        assert status == 200, f"{promql}: {answer}"
        assert answer["status"] == "success", f"{promql}: {answer}"
        return answer["data"]  # type: ignore[no-any-return]

    def api(self, path: str) -> Any:
        status, body = _get(f"{self.url}/api/v1/{path}")
        assert status == 200, body
        return json.loads(body)["data"]


@pytest.fixture(scope="module")
def prometheus(bridge: Bridge, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """A Prometheus server of the test's own: free loopback port, temporary storage, scraping
    the bridge every second as the chart's ServiceMonitor would label it, with the chart's
    rules for a bridge without the poller."""
    if PROMETHEUS is None:
        pytest.skip(f"no prometheus: {_INSTALL_HINT}")
    directory = tmp_path_factory.mktemp("prometheus")
    _rules_file(directory, RULES_POLLER_OFF)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yaml"],
        "scrape_configs": [
            {
                "job_name": JOB,
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{bridge.admin_port}"],
                        "labels": {"namespace": NAMESPACE},
                    }
                ],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = directory / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            cwd=directory,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(process, f"http://127.0.0.1:{port}", log)
    with _stopping(process):

        def ready() -> bool | None:
            assert process.poll() is None, log.read_text(errors="replace")[-4000:]
            status, _ = _get(f"{server.url}/-/ready", timeout=1.0)
            return True if status == 200 else None

        _eventually(ready, START_TIMEOUT, "Prometheus to be ready")
        yield server


@pytest.fixture(scope="module")
def published(bridge: Bridge) -> float:
    """Post one webhook; the bridge's own count of it afterwards."""
    body = {
        "event": "create",
        "time": int(time.time()),
        "object": "conversationevent",
        "objectId": uuid.uuid4().int % 10**9,
        "props": {
            "eventType": "media.OCRDone",
            "eventCode": 41,
            "conversationId": 548,
            "ticketId": 361,
            "text": "text captured by OCR",
        },
    }
    status, answer = bridge.post_webhook(body)
    assert status == 200, (answer, bridge.log_tail())
    assert answer == {"status": "accepted", "eventId": body["objectId"]}
    sample = re.search(
        r'^apizee_bridge_events_published_total\{category="media",event_type="media.OCRDone",'
        r'source="WEBHOOK"\} (\S+)$',
        bridge.metrics(),
        re.MULTILINE,
    )
    assert sample is not None
    return float(sample[1])


# -- promtool -------------------------------------------------------------------------------


@needs_promtool
@pytest.mark.parametrize("values", [RULES_POLLER_OFF, RULES_POLLER_ON], ids=["poller_off", "on"])
def test_alert_rules_pass_promtool_check(values: dict[str, Any], tmp_path: Path) -> None:
    assert PROMTOOL is not None
    rules = _rules_file(tmp_path, values)
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in alert_groups(values))
    assert f"SUCCESS: {count} rules found" in result.stdout


@needs_promtool
def test_promtool_check_refuses_a_broken_rule(tmp_path: Path) -> None:
    # The check above can fail: a rule with a PromQL syntax error is refused.
    assert PROMTOOL is not None
    groups = alert_groups(RULES_POLLER_OFF)
    groups[0]["rules"][0]["expr"] = "sum(rate(apizee_bridge_webhook_requests_total[5m])"
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0


@needs_promtool
def test_alerts_fire_in_their_scenarios(tmp_path: Path) -> None:
    """tests/integration/alerts_test.yaml: each alert fires when it should, not when healthy."""
    assert PROMTOOL is not None
    # Annotations are templates over $value; `promtool check rules` validated them above.
    _rules_file(tmp_path, RULES_POLLER_ON, annotations=False)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    result = subprocess.run(
        [PROMTOOL, "test", "rules", ALERTS_TEST.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every alert of the chart has a scenario in which it fires.
    scenarios = yaml.safe_load(ALERTS_TEST.read_text(encoding="utf-8"))["tests"]
    fired = {
        check["alertname"]
        for scenario in scenarios
        for check in scenario["alert_rule_test"]
        if check["exp_alerts"]
    }
    alerts = {r["alert"] for g in alert_groups(RULES_POLLER_ON) for r in g["rules"]}
    assert fired == alerts


# -- metric names -----------------------------------------------------------------------------


def _exported_names(exposition: str) -> set[str]:
    """Every series name a scrape of this exposition can yield, samples or not yet."""
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return names


def _named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:apizee_bridge|process)_[a-z0-9_]+)\b", expr))


def test_every_metric_of_the_dashboard_and_the_rules_is_exported(bridge: Bridge) -> None:
    exported = _exported_names(bridge.metrics())
    # The poller is off in this bridge: its metrics must still be declared (HELP/TYPE).
    assert "apizee_bridge_gaps_filled_total" in exported
    assert "apizee_bridge_publish_duration_seconds_bucket" in exported
    used: dict[str, str] = {}
    for title, expr in _dashboard_exprs():
        used.update(dict.fromkeys(_named_metrics(expr), f"dashboard panel {title!r}"))
    for values in (RULES_POLLER_OFF, RULES_POLLER_ON):
        for expr in _rule_exprs(values):
            used.update(dict.fromkeys(_named_metrics(expr), f"alert rule {expr!r}"))
    assert len(used) >= 30
    missing = {name: where for name, where in used.items() if name not in exported}
    assert missing == {}


def test_a_misspelt_metric_would_be_caught(bridge: Bridge) -> None:
    # The check above can fail: a name that differs by one letter is not exported.
    exported = _exported_names(bridge.metrics())
    assert "apizee_bridge_events_published_total" in exported
    assert "apizee_bridge_event_published_total" not in exported
    assert "apizee_bridge_events_published" not in exported


# Label names the catalogue allows: bounded enums only, never a ticket or event id.
BOUNDED_LABELS = {"status", "reason", "category", "event_type", "source", "topic_kind", "kind"}
BOUNDED_LABELS |= {"outcome", "version", "topic_suffix"}  # topic_suffix: one of the bridge's topics


def test_metric_labels_are_bounded() -> None:
    declared = {
        metric._name: set(metric._labelnames)
        for metric in vars(metrics).values()
        if isinstance(metric, MetricWrapperBase)
    }
    assert len(declared) >= 30
    unbounded = {name: labels - BOUNDED_LABELS for name, labels in declared.items()}
    assert {name: labels for name, labels in unbounded.items() if labels} == {}


# -- a real Prometheus ---------------------------------------------------------------------------


@needs_prometheus
def test_prometheus_scrapes_the_published_events_counter(
    prometheus: Prometheus, published: float
) -> None:
    assert published >= 1
    promql = (
        f'apizee_bridge_events_published_total{{job="{JOB}",namespace="{NAMESPACE}",'
        f'category="media",event_type="media.OCRDone",source="WEBHOOK"}}'
    )

    def scraped() -> float | None:
        result = prometheus.query(promql)["result"]
        if result and float(result[0]["value"][1]) == published:
            return published
        return None

    assert _eventually(scraped, SCRAPE_TIMEOUT, promql) == published
    (up,) = prometheus.query(f'up{{job="{JOB}",namespace="{NAMESPACE}"}}')["result"]
    assert up["value"][1] == "1"


@needs_prometheus
def test_every_dashboard_query_runs(prometheus: Prometheus, published: float) -> None:
    by_category = "Events published per category"
    answers = {}
    for title, expr in _dashboard_exprs():
        for variable, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, (title, expr)
        answers[(title, expr)] = prometheus.query(expr)

    # Rates need two scrapes of the new series: wait for the panel to show the category.
    ((_, expr),) = [(t, e) for t, e in answers if t == by_category]

    def media_shown() -> bool | None:
        result = prometheus.query(expr)["result"]
        return True if any(r["metric"].get("category") == "media" for r in result) else None

    _eventually(media_shown, SCRAPE_TIMEOUT, f"{by_category}: {expr}")


@needs_prometheus
def test_rules_evaluate_and_stay_quiet_on_a_healthy_bridge(
    prometheus: Prometheus, published: float
) -> None:
    expected = {r["alert"] for g in alert_groups(RULES_POLLER_OFF) for r in g["rules"]}

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
        # A rule never evaluated reports the zero time, 0001-01-01T00:00:00Z.
        done = all(not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if rules and done else None

    rules = _eventually(evaluated, SCRAPE_TIMEOUT, "every rule evaluated")
    assert {r["name"] for r in rules} == expected
    assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    # The bridge is up and ready, nothing failed: no alert is pending or firing.
    assert [(r["name"], r["state"]) for r in rules if r["state"] != "inactive"] == []
