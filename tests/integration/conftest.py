"""Integration fixtures: one real Kafka-protocol broker per session, unique topics per test.

`KAFKA_BOOTSTRAP_SERVERS` points the suite at a real cluster; otherwise a tansu process is
started on a free loopback port and stopped at the end of the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from bridge.devbroker import S3Store, TansuBroker

_SESSION_BROKER = pytest.StashKey[TansuBroker]()
_OWN_BROKERS = pytest.StashKey[list[TansuBroker]]()


@pytest.fixture(scope="session")
def broker_is_tansu() -> bool:
    """True unless an external cluster is used; tansu has no idempotence, no transactions."""
    return not os.environ.get("KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture(scope="session")
def kafka_bootstrap(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    log_path = tmp_path_factory.mktemp("broker") / "tansu.log"
    with TansuBroker(log_path=log_path) as broker:
        request.config.stash[_SESSION_BROKER] = broker
        yield broker.bootstrap_servers
    del request.config.stash[_SESSION_BROKER]


@pytest.fixture
def tansu_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of the test's own, for tests that kill or restart it (always tansu)."""
    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        request.config.stash.setdefault(_OWN_BROKERS, []).append(broker)
        try:
            yield broker
        finally:
            request.config.stash[_OWN_BROKERS].remove(broker)


@pytest.fixture
def durable_tansu_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of the test's own on S3 storage (a moto server): records survive a kill."""
    with (
        S3Store(log_path=tmp_path / "moto.log") as store,
        TansuBroker(log_path=tmp_path / "tansu.log", storage=store) as broker,
    ):
        request.config.stash.setdefault(_OWN_BROKERS, []).append(broker)
        try:
            yield broker
        finally:
            request.config.stash[_OWN_BROKERS].remove(broker)


@pytest.fixture
def topic_prefix() -> str:
    """A prefix no other test uses, so tests share the broker without seeing each other."""
    return f"test.{uuid.uuid4().hex[:8]}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A failed integration test often comes down to the broker: show what it said.
    report = yield
    if report.failed:
        own: list[TansuBroker] = item.config.stash.get(_OWN_BROKERS, [])
        session = item.config.stash.get(_SESSION_BROKER, None)
        for broker in [session, *own]:
            if broker is not None:
                report.sections.append((f"broker log tail {broker!r}", broker.log_tail()))
    return report
