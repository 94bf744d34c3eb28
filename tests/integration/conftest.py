"""Integration fixtures: Apache Kafka started by the tests, unique topics per test.

One single-node cluster serves the session (`kafka_bootstrap`); tests that kill, pause or
restart a broker get a cluster of their own (`own_kafka`, 1 node; failover tests start 3).
`KAFKA_BOOTSTRAP_SERVERS` points the shared fixture at an external cluster instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from bridge.devtools.devbroker import KafkaCluster, TansuBroker
from bridge.devtools.devregistry import RegistryServer

# Every broker or cluster a test started, so a failure report can show its log tail.
_LOGGED = pytest.StashKey[list[KafkaCluster | TansuBroker]]()


def remember(config: pytest.Config, server: KafkaCluster | TansuBroker) -> None:
    config.stash.setdefault(_LOGGED, []).append(server)


def forget(config: pytest.Config, server: KafkaCluster | TansuBroker) -> None:
    config.stash.get(_LOGGED, []).remove(server)


@pytest.fixture(scope="session")
def kafka_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KafkaCluster | None]:
    """The session's single-node Apache Kafka; None when an external cluster is named."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield None
        return
    with KafkaCluster(nodes=1, workdir=tmp_path_factory.mktemp("kafka"), heap="768m") as cluster:
        remember(request.config, cluster)
        yield cluster
        forget(request.config, cluster)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_cluster: KafkaCluster | None) -> str:
    if kafka_cluster is None:
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    return kafka_cluster.bootstrap_servers


@pytest.fixture
def own_kafka(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KafkaCluster]:
    """A single-node cluster of the test's own, for tests that kill or restart it."""
    with KafkaCluster(nodes=1, workdir=tmp_path / "kafka") as cluster:
        remember(request.config, cluster)
        try:
            yield cluster
        finally:
            forget(request.config, cluster)


@pytest.fixture
def tansu_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TansuBroker]:
    """tansu, the broker of `make run`, for its smoke tests."""
    with TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        remember(request.config, broker)
        try:
            yield broker
        finally:
            forget(request.config, broker)


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
        for server in item.config.stash.get(_LOGGED, []):
            report.sections.append((f"broker log tail {server!r}", server.log_tail()))
    return report


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """The session's Schema Registry: Apicurio (`make registry`), in memory; `.url` is its
    Confluent-compatible API. Tests keep apart by subject (their topic prefix)."""
    log_path = tmp_path_factory.mktemp("registry") / "apicurio.log"
    with RegistryServer(log_path=log_path) as registry:
        yield registry
