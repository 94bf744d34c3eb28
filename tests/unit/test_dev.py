"""Dev mode's decisions (bridge/devtools/dev.py) without starting anything: whether the
simulated Apizee runs and how the bridge is pointed at it, how its webhooks authenticate, and
the console line that tells a gap filled by the poller from a webhook.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from bridge.apizee import parse_events_body
from bridge.codec import Codec
from bridge.config import KafkaSettings, load_settings
from bridge.devtools import dev
from bridge.devtools.dev import (
    DEV_POLLER,
    SEED_EVENT,
    SEED_WEBHOOK,
    SIM_DROP,
    SIM_FIRST_TICKET_ID,
    ConsoleConsumer,
    DevModeError,
    LocalBroker,
    _DevSimulator,
    _env_file_text,
    _Local,
    _plan,
    _run_dir_held,
    _webhook_config,
    _write_env_file,
    broker_wanted,
    choose_broker,
    forget_sourced_session,
    session_env,
    simulator_wanted,
    try_commands,
)
from bridge.devtools.devbroker.kafka import _REPO as KAFKA_REPO
from bridge.devtools.devregistry import _DEFAULT_JAR
from bridge.devtools.simulator import REST_PATH, SimulatorConfig
from bridge.models import Source, from_webhook, parse_webhook


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No BRIDGE_* of the caller's; ports the plan does not need to probe."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BRIDGE_INGRESS_PORT", "0")
    monkeypatch.setenv("BRIDGE_ADMIN_PORT", "0")


# -- whether the simulator runs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wanted"),
    [(None, True), ("", True), ("true", True), ("1", True), ("false", False), ("OFF", False)],
)
def test_the_simulator_runs_unless_the_environment_says_false(
    monkeypatch: pytest.MonkeyPatch, value: str | None, wanted: bool
) -> None:
    if value is not None:
        monkeypatch.setenv("BRIDGE_DEV_SIMULATOR", value)
    assert simulator_wanted() is wanted
    assert simulator_wanted(flag_off=True) is False  # --no-simulator wins


def test_a_misspelt_simulator_switch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_DEV_SIMULATOR", "flase")
    with pytest.raises(DevModeError, match="BRIDGE_DEV_SIMULATOR='flase'"):
        simulator_wanted()


def test_by_default_the_poller_reads_the_simulator_with_short_timings() -> None:
    plan = _plan()
    assert plan.simulator is not None
    assert plan.overrides["apizee"] == {"token": plan.simulator.rest_token, "token_file": None}
    assert plan.overrides["poller"] == DEV_POLLER
    assert plan.simulator.first_event_id == 56_000  # the local broker starts empty
    settings = load_settings(**plan.overrides)
    assert settings.apizee.token is not None
    assert settings.apizee.token.get_secret_value() == plan.simulator.rest_token
    assert (settings.poller.interval_seconds, settings.poller.settle_seconds) == (5.0, 3.0)


def test_poller_timings_the_user_chose_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_POLLER_INTERVAL_SECONDS", "30")
    settings = load_settings(**_plan().overrides)
    assert (settings.poller.interval_seconds, settings.poller.settle_seconds) == (30.0, 3.0)


def test_a_configured_apizee_is_polled_instead_of_the_simulator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_APIZEE_BASE_URL", "https://apizee.example")
    monkeypatch.setenv("BRIDGE_APIZEE_TOKEN", "real-token")
    plan = _plan()
    assert plan.simulator is None
    assert "apizee" not in plan.overrides
    assert "poller" not in plan.overrides  # the real API gets the real timings
    settings = load_settings(**plan.overrides)
    assert settings.apizee.base_url == "https://apizee.example"
    assert settings.poller.interval_seconds == 60.0


def test_without_the_simulator_there_is_no_poller() -> None:
    plan = _plan(simulate=False)
    assert plan.simulator is None
    assert load_settings(**plan.overrides).apizee.base_url is None


def test_on_a_lasting_cluster_the_simulated_ids_are_new(monkeypatch: pytest.MonkeyPatch) -> None:
    # Its state topic remembers past sessions: their ids must not come back.
    monkeypatch.setenv("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    first = _plan().simulator
    second = _plan().simulator
    assert first is not None
    assert second is not None
    assert 56_000 < first.first_event_id <= second.first_event_id


# -- the simulator's webhooks authenticate as the bridge expects --------------------------------


def test_webhooks_carry_the_generated_token() -> None:
    plan = _plan()
    settings = load_settings(**plan.overrides)
    config = _webhook_config(settings, "http://127.0.0.1:1/webhooks/apizee")
    assert (config.token, config.token_header) == (plan.generated_token, "X-Webhook-Token")
    assert (config.hmac_secret, config.basic, config.drop) == (None, None, SIM_DROP)


def test_webhooks_are_signed_when_hmac_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AUTH_HMAC_SECRET", "k3y")
    monkeypatch.setenv("BRIDGE_AUTH_TIMESTAMP_HEADER", "X-Apizee-Timestamp")
    settings = load_settings(**_plan().overrides)
    config = _webhook_config(settings, "http://127.0.0.1:1/webhooks/apizee")
    assert (config.hmac_secret, config.timestamp_header, config.token) == (
        "k3y",
        "X-Apizee-Timestamp",
        None,
    )


def test_webhooks_use_basic_auth_when_that_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AUTH_BASIC_USERNAME", "apizee")
    monkeypatch.setenv("BRIDGE_AUTH_BASIC_PASSWORD", "pw")
    settings = load_settings(**_plan().overrides)
    assert _webhook_config(settings, "http://127.0.0.1:1/").basic == ("apizee", "pw")


# -- the simulated REST API knows the banner's example ------------------------------------------


async def test_the_simulated_apizee_lists_the_seed_example_under_ticket_361() -> None:
    config = SimulatorConfig(tickets=4, manual=True, first_ticket_id=362, rest_token="t")
    async with _DevSimulator(config) as simulator, aiohttp.ClientSession() as session:
        url = simulator.base_url + REST_PATH.format(ticketId=361)
        async with session.get(url, headers={"Authorization": "Bearer t"}) as response:
            assert response.status == 200
            items, invalid = parse_events_body(await response.read())
    assert invalid == []
    [item] = items
    webhook = orjson.loads(SEED_WEBHOOK)
    assert (item.id, item.eventType, item.timestamp, item.conversationId) == (
        webhook["objectId"],
        webhook["props"]["eventType"],
        webhook["time"],
        webhook["props"]["conversationId"],
    )
    assert item.data == {"text": webhook["props"]["text"]}
    assert SEED_EVENT.ticket_id == webhook["props"]["ticketId"]


# -- the console line ----------------------------------------------------------------------------


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@pytest.mark.parametrize(
    ("source", "shown"),
    [(Source.WEBHOOK, "source=WEBHOOK at="), (Source.POLLER, "source=POLLER (gap filled) at=")],
)
def test_the_console_line_shows_where_the_event_came_from(source: Source, shown: str) -> None:
    codec = Codec()
    event = replace(from_webhook(parse_webhook(SEED_WEBHOOK), 0), source=source)
    record = _Record(
        "apizee.session-events.media",
        1,
        7,
        b"361",
        codec.encode(event),
        [("event-type", b"media.OCRDone"), ("source", source.value.encode())],
    )
    line = ConsoleConsumer(KafkaSettings(), codec=codec).describe(record)
    assert line.startswith(
        f"apizee.session-events.media p1@7 key=361 media.OCRDone id=1266 {shown}"
    ), line


# -- the local broker: Apache Kafka when it can run, tansu otherwise ----------------------------

REPO = Path(__file__).resolve().parents[2]


def test_the_dev_servers_find_this_checkouts_jars() -> None:
    assert KAFKA_REPO == REPO
    assert _DEFAULT_JAR == REPO / "devregistry/server/target/apicurio-registry-runner.jar"
    assert dev._REPO == REPO


def test_without_java_the_broker_is_tansu_and_it_is_said_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    kind, reason = choose_broker(broker_wanted())
    assert kind == "tansu"
    assert reason is not None
    assert "needs a Java runtime" in reason
    # Asked for by name, Apache Kafka that cannot run is an error, not a silent fallback.
    monkeypatch.setenv("BRIDGE_DEV_BROKER", "kafka")
    with pytest.raises(DevModeError, match=r"Apache Kafka cannot run: .*Java runtime"):
        choose_broker(broker_wanted())


def test_without_kafkas_jars_the_broker_is_tansu_and_make_kafka_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BRIDGE_KAFKA_LIBS", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    kind, reason = choose_broker(None)
    assert kind == "tansu"
    assert reason is not None
    # Without Java the runtime is named first; with it, the jars.
    assert "make kafka" in reason or "Java runtime" in reason


def test_the_broker_asked_for_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_DEV_BROKER", "tansu")
    assert choose_broker(broker_wanted())[0] == "tansu"
    assert broker_wanted("kafka") == "kafka"  # --broker over the variable
    monkeypatch.setenv("BRIDGE_DEV_BROKER", "redpanda")
    with pytest.raises(DevModeError, match="BRIDGE_DEV_BROKER='redpanda': expected kafka"):
        broker_wanted()


def test_two_sessions_cannot_share_a_run_dir(tmp_path: Path) -> None:
    with _run_dir_held(tmp_path / "run"):
        assert (tmp_path / "run" / "dev.lock").read_text().strip() == str(os.getpid())
        with (
            pytest.raises(DevModeError, match=r"another `apizee-bridge dev` \(pid \d+\)"),
            _run_dir_held(tmp_path / "run"),
        ):
            pass
    with _run_dir_held(tmp_path / "run"):  # released with the first
        pass


# -- the session's coordinates ---------------------------------------------------------------


def _session(kind: str = "kafka", registry: bool = False) -> tuple[Any, Any, _Local]:
    plan = _plan()
    assert plan.simulator is not None
    broker = LocalBroker(kind=kind, bootstrap_servers="127.0.0.1:23456", pid=1)  # type: ignore[arg-type]
    overrides = dict(plan.overrides)
    overrides["kafka"] = dev._local_kafka(plan.settings.kafka, broker)
    if registry:
        overrides["schema"] = {"registry_url": "http://127.0.0.1:1/apis/ccompat/v7"}
    settings = load_settings(**overrides)
    settings = dev._with_apizee_at(settings, "http://127.0.0.1:4567")
    return settings, plan, _Local(Path("run"), broker=broker)


def test_the_env_file_points_the_commands_at_the_session() -> None:
    settings, plan, local = _session()
    env = session_env(settings, plan, local)
    assert env == {
        "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:23456",
        "BRIDGE_KAFKA_TOPIC_PREFIX": "apizee.session-events",
        "BRIDGE_KAFKA_TOPIC_PARTITIONS": "3",
        "BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR": "1",
        "BRIDGE_AUTH_TOKEN": plan.generated_token,
        "BRIDGE_APIZEE_BASE_URL": "http://127.0.0.1:4567",
        "BRIDGE_APIZEE_TOKEN": plan.simulator.rest_token,
        "BRIDGE_LOG_FORMAT": "console",
    }
    # On tansu the commands' producers must not be idempotent either.
    settings, plan, local = _session("tansu")
    assert session_env(settings, plan, local)["BRIDGE_KAFKA_ENABLE_IDEMPOTENCE"] == "false"


def test_the_users_own_secrets_stay_out_of_the_env_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AUTH_HMAC_SECRET", "k3y")
    monkeypatch.setenv("BRIDGE_LOG_FORMAT", "json")
    settings, plan, local = _session()
    env = session_env(settings, plan, local)
    assert "k3y" not in _env_file_text(env)
    assert "BRIDGE_AUTH_TOKEN" not in env  # none was generated
    assert "BRIDGE_LOG_FORMAT" not in env  # the user's choice stands


def test_the_env_file_is_sourceable_and_private(tmp_path: Path) -> None:
    settings, plan, local = _session()
    env = session_env(settings, plan, local)
    env["BRIDGE_KAFKA_TOPIC_PREFIX"] = "it's $HOME"  # quoted, not expanded
    path = tmp_path / "env"
    _write_env_file(path, env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    shown = subprocess.run(
        ["bash", "-c", f"source {path} && env && command -v apizee-bridge"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.splitlines()
    for name, value in env.items():
        assert f"{name}={value}" in shown
    assert f"BRIDGE_DEV_SESSION={' '.join(env)}" in shown
    # The venv's commands come first on PATH.
    assert shown[-1] == str(Path(sys.executable).parent / "apizee-bridge")


def test_the_banner_commands_name_a_ticket_the_simulator_has() -> None:
    settings, plan, local = _session()
    commands = try_commands(settings, plan, local)
    assert commands[:4] == [
        "source run/env",
        "apizee-bridge check",
        "apizee-bridge tail --from-beginning --count 10",
        "apizee-bridge replay --from dlq --dry-run",
    ]
    assert f"apizee-bridge backfill --ticket {SIM_FIRST_TICKET_ID}" in commands
    java = [c for c in commands if c.startswith("java ")]
    if java:
        assert f"--ticket {SIM_FIRST_TICKET_ID}" in java[0]
        assert '--bootstrap-servers "$BRIDGE_KAFKA_BOOTSTRAP_SERVERS"' in java[0]
    # tansu: the Java kit cannot connect, so it is not offered.
    settings, plan, local = _session("tansu")
    assert not [c for c in try_commands(settings, plan, local) if c.startswith("java ")]
    settings, plan, local = _session(registry=True)
    assert session_env(settings, plan, local)["BRIDGE_SCHEMA_REGISTRY_URL"] == (
        "http://127.0.0.1:1/apis/ccompat/v7"
    )
    java = [c for c in try_commands(settings, plan, local) if c.startswith("java ")]
    if java:
        assert '--schema-registry-url "$BRIDGE_SCHEMA_REGISTRY_URL"' in java[0]


def test_a_shell_that_sourced_an_old_session_starts_a_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Sourced, then the session stopped: its broker and simulator are gone. A new `make run`
    # from that shell must start its own, not point at them.
    settings, plan, local = _session()
    env = session_env(settings, plan, local)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BRIDGE_DEV_SESSION", " ".join(env))
    monkeypatch.setenv("BRIDGE_KAFKA_LINGER_MS", "7")  # the user's own: kept
    assert forget_sourced_session() == list(env)
    assert "BRIDGE_DEV_SESSION" not in os.environ
    assert not [name for name in env if name in os.environ]
    assert os.environ["BRIDGE_KAFKA_LINGER_MS"] == "7"
    again = _plan()
    assert again.local_broker
    assert again.simulator is not None
    assert again.generated_token is not None
