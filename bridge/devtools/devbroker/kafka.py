"""Apache Kafka for the tests: a KRaft cluster of 1 or 3 combined broker+controller nodes.

The jars come from Maven Central through `devkafka/pom.xml` (`make kafka` copies them into
`devkafka/lib`); each node is one JVM on free loopback ports, its data in a directory of its
own, so a node can be killed, paused and restarted and keeps what it had on disk. Optional
listeners: SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, users created at format time),
SSL and MTLS (PEM files the caller makes), SASL_SSL, and StandardAuthorizer for ACLs.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from bridge.devtools.devbroker._local import (
    _LOOPBACK,
    _POLL_INTERVAL,
    DevBrokerError,
    _LocalServer,
    free_port,
    java_executable,
    probe_metadata,
)

__all__ = ["KafkaCluster", "KafkaNode", "KafkaTls", "kafka_libs"]

# The listener names a cluster can have; PLAINTEXT (unauthenticated, a super user when ACLs
# are on) is always there: brokers talk to each other on it, and tests administer through it.
PLAINTEXT: Final = "PLAINTEXT"
SASL_PLAINTEXT: Final = "SASL_PLAINTEXT"
SSL: Final = "SSL"
MTLS: Final = "MTLS"  # SSL with ssl.client.auth=required
SASL_SSL: Final = "SASL_SSL"
_CONTROLLER: Final = "CONTROLLER"
_PROTOCOLS: Final = {
    PLAINTEXT: "PLAINTEXT",
    _CONTROLLER: "PLAINTEXT",
    SASL_PLAINTEXT: "SASL_PLAINTEXT",
    SSL: "SSL",
    MTLS: "SSL",
    SASL_SSL: "SASL_SSL",
}
SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SCRAM_MECHANISMS: Final = ("SCRAM-SHA-256", "SCRAM-SHA-512")
# Users go into a JAAS line and the storage tool's --add-scram argument: keep them plain.
_SIMPLE_WORD: Final = re.compile(r"[A-Za-z0-9_.-]+")

_REPO: Final = Path(__file__).resolve().parents[3]
_LIBS_ENV: Final = "BRIDGE_KAFKA_LIBS"


def kafka_libs() -> Path:
    """The folder of Kafka's jars (`$BRIDGE_KAFKA_LIBS`, else devkafka/lib of this checkout)."""
    libs = Path(os.environ.get(_LIBS_ENV) or _REPO / "devkafka" / "lib")
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise DevBrokerError(
            f"no Apache Kafka jars in {libs}: run `make kafka` (resolves devkafka/pom.xml from"
            f" Maven Central), or point {_LIBS_ENV} at a folder holding them"
        )
    return libs


def _escape(value: str) -> str:
    """A value for a Java .properties file (backslashes and line breaks escaped)."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _cluster_id() -> str:
    """A random cluster id, as Kafka's Uuid.randomUuid makes them: never starting with '-'
    (the storage tool would read it as an option, one time in 32)."""
    while True:
        found = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not found.startswith("-"):
            return found


@dataclass(frozen=True, slots=True)
class KafkaTls:
    """PEM files for the SSL listeners: the brokers' certificate chain and PKCS#8 key, and the
    CA that signs the clients' certificates on the MTLS listener."""

    cert_chain: Path
    key: Path
    client_ca: Path


class KafkaNode(_LocalServer):
    """One Kafka JVM: broker and controller in one process, ports fixed for its lifetime."""

    _name = "Kafka node"

    def __init__(
        self,
        node_id: int,
        *,
        host: str,
        listeners: Sequence[str],
        directory: Path,
        jvm_options: Sequence[str],
        start_timeout: float,
        stop_timeout: float,
    ) -> None:
        self.node_id = node_id
        self.ports = {name: free_port(host) for name in (*listeners, _CONTROLLER)}
        self.directory = directory
        self.data_dir = directory / "data"
        self.config_path = directory / "server.properties"
        self._jvm_options = list(jvm_options)
        self.paused = False
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(
            self.ports[PLAINTEXT],
            host=host,
            log_path=directory / "kafka.log",
            log_prefix="kafka-",
            start_timeout=start_timeout,
            stop_timeout=stop_timeout,
        )

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def address(self, listener: str = PLAINTEXT) -> str:
        return f"{self.host}:{self.ports[listener]}"

    def start(self) -> Self:
        """Launch the JVM and return once it answers Metadata listing itself."""
        self.launch()
        self.wait_ready()
        return self

    def launch(self) -> None:
        if self.is_running:
            return
        java = java_executable("Apache Kafka")
        classpath = f"{kafka_libs()}/*"
        log_config = _REPO / "devkafka" / "log4j2.properties"
        argv = [
            java,
            *self._jvm_options,
            f"-Dlog4j2.configurationFile={log_config}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.config_path),
        ]
        self.paused = False
        self._launch(argv)

    def wait_ready(self, deadline: float | None = None) -> None:
        deadline = deadline or time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._raise_if_exited(f"Kafka node {self.node_id}")
            try:
                brokers = probe_metadata(self.host, self.port)
            except (OSError, struct.error, DevBrokerError) as exc:
                last_error = exc
            else:
                if any(node == self.node_id for node, _, _ in brokers):
                    return
                last_error = DevBrokerError(f"metadata lists {brokers}, not node {self.node_id}")
            time.sleep(_POLL_INTERVAL * 4)
        raise DevBrokerError(
            f"Kafka node {self.node_id} on {self.address()} was not ready within"
            f" {self.start_timeout}s ({last_error!r}); log {self.log_path}:\n{self.log_tail()}"
        )

    def pause(self) -> None:
        """SIGSTOP: the JVM freezes, its sockets stay open and unanswered."""
        if self._process is None:
            raise DevBrokerError(f"Kafka node {self.node_id} is not running")
        self._process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.paused:
            self.resume()
        super().stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        if self.paused:
            state = "paused"
        return f"KafkaNode({self.node_id}, {self.address()}, {state}, log={str(self.log_path)!r})"


class KafkaCluster:
    """Apache Kafka in KRaft combined mode: `nodes` JVMs, a quorum of all of them.

        with KafkaCluster(nodes=3, workdir=tmp_path) as cluster:
            cluster.bootstrap_servers; cluster.kill(2); cluster.restart(2)

    `users` (name -> password) adds a SASL_PLAINTEXT listener where each user can log in with
    PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512; `tls` adds SSL and MTLS listeners (and SASL_SSL
    with `users`); `authorizer` turns on StandardAuthorizer (deny unless an ACL allows;
    the PLAINTEXT listener's ANONYMOUS is a super user, for the tests' own admin work).
    `broker_config` overrides any server property.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        workdir: str | os.PathLike[str] | None = None,
        users: Mapping[str, str] | None = None,
        tls: KafkaTls | None = None,
        authorizer: bool = False,
        broker_config: Mapping[str, str] | None = None,
        heap: str = "512m",
        host: str = _LOOPBACK,
        start_timeout: float = 120.0,
        stop_timeout: float = 30.0,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster has at least one node")
        for name, password in (users or {}).items():
            if not (_SIMPLE_WORD.fullmatch(name) and _SIMPLE_WORD.fullmatch(password)):
                raise ValueError(f"user {name!r}: names and passwords of [A-Za-z0-9_.-] only")
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="kafka-cluster-"))
        self.users = dict(users or {})
        self.tls = tls
        self.authorizer = authorizer
        self.host = host
        self.cluster_id = _cluster_id()
        listeners = [PLAINTEXT]
        if self.users:
            listeners.append(SASL_PLAINTEXT)
        if tls is not None:
            listeners += [SSL, MTLS]
            if self.users:
                listeners.append(SASL_SSL)
        self.listeners = tuple(listeners)
        jvm_options = [
            f"-Xms{heap}",
            f"-Xmx{heap}",
            # Serial GC: the machines that run the tests have 2 cores for several JVMs.
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
        ]
        self.nodes = [
            KafkaNode(
                node_id,
                host=host,
                listeners=self.listeners,
                directory=self.workdir / f"node-{node_id}",
                jvm_options=jvm_options,
                start_timeout=start_timeout,
                stop_timeout=stop_timeout,
            )
            for node_id in range(1, nodes + 1)
        ]
        self.start_timeout = start_timeout
        self._broker_config = dict(broker_config or {})
        self._formatted = False

    # -- addresses ---------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap(PLAINTEXT)

    def bootstrap(self, listener: str = PLAINTEXT) -> str:
        """Every node's address on `listener`, comma-separated (running or not)."""
        if listener not in self.listeners:
            raise DevBrokerError(f"this cluster has no {listener} listener ({self.listeners})")
        return ",".join(node.address(listener) for node in self.nodes)

    def node(self, node_id: int) -> KafkaNode:
        for node in self.nodes:
            if node.node_id == node_id:
                return node
        raise DevBrokerError(f"no node {node_id} (nodes {[n.node_id for n in self.nodes]})")

    @property
    def running(self) -> list[KafkaNode]:
        return [node for node in self.nodes if node.is_running]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Format the nodes' storage (first start only), launch every node, wait for all."""
        try:
            if not self._formatted:
                self._format()
            for node in self.nodes:
                node.launch()
            deadline = time.monotonic() + self.start_timeout
            for node in self.nodes:
                node.wait_ready(deadline)
            self._wait_cluster_sees(self.nodes, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM every node at once (a controlled shutdown), SIGKILL what lingers."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))
        if self._own_workdir:
            for node in self.nodes:
                shutil.rmtree(node.data_dir, ignore_errors=True)
            self._formatted = False

    def stop_node(self, node_id: int) -> None:
        self.node(node_id).stop()

    def kill(self, node_id: int) -> None:
        self.node(node_id).kill()

    def pause(self, node_id: int) -> None:
        self.node(node_id).pause()

    def resume(self, node_id: int) -> None:
        self.node(node_id).resume()

    def start_node(self, node_id: int) -> None:
        """Start a stopped node on its old ports and data; return once the others see it."""
        node = self.node(node_id)
        node.start()
        self._wait_cluster_sees(self.running, time.monotonic() + self.start_timeout)

    def restart(self, node_id: int) -> None:
        self.stop_node(node_id)
        self.start_node(node_id)

    def restart_all(self) -> None:
        """The whole cluster down, then up again from its disks (ports and data kept)."""
        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(lambda node: node.stop(), self.nodes))
        for node in self.nodes:
            node.launch()
        deadline = time.monotonic() + self.start_timeout
        for node in self.nodes:
            node.wait_ready(deadline)
        self._wait_cluster_sees(self.nodes, deadline)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(f"--- node {n.node_id}:\n{n.log_tail(lines)}" for n in self.nodes)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        running = [n.node_id for n in self.running]
        return f"KafkaCluster({len(self.nodes)} nodes, running {running}, {self.workdir})"

    # -- internals ---------------------------------------------------------------------

    def _wait_cluster_sees(self, nodes: Sequence[KafkaNode], deadline: float) -> None:
        """Until every node in `nodes` lists all of them in its Metadata (registered, unfenced)."""
        want = {node.node_id for node in nodes}
        seen: dict[int, set[int]] = {}
        while time.monotonic() < deadline:
            for node in nodes:
                try:
                    seen[node.node_id] = {n for n, _, _ in probe_metadata(node.host, node.port)}
                except (OSError, struct.error, DevBrokerError):
                    seen[node.node_id] = set()
            if all(want <= got for got in seen.values()):
                return
            time.sleep(_POLL_INTERVAL * 4)
        raise DevBrokerError(
            f"Kafka nodes {sorted(want)} did not all see each other in time (seen {seen});"
            f" logs:\n{self.log_tail()}"
        )

    def _format(self) -> None:
        for node in self.nodes:
            node.config_path.write_text(self._properties(node))
        java, classpath = java_executable("Apache Kafka"), f"{kafka_libs()}/*"
        scram: list[str] = []
        for name, password in self.users.items():
            for mechanism in _SCRAM_MECHANISMS:
                scram += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]

        def format_node(node: KafkaNode) -> None:
            argv = [
                java,
                "-Xmx256m",
                "-XX:TieredStopAtLevel=1",  # a one-shot tool: quick start beats peak speed
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                # One argument: an id may start with "-", which argparse takes for an option.
                f"--cluster-id={self.cluster_id}",
                "--config",
                str(node.config_path),
                *scram,
            ]
            done = subprocess.run(  # noqa: S603 - argv built here, no shell
                argv, capture_output=True, timeout=120, check=False
            )
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode(errors="replace")[-4000:]
                raise DevBrokerError(f"formatting Kafka node {node.node_id} failed:\n{output}")

        with ThreadPoolExecutor(max_workers=len(self.nodes)) as pool:
            list(pool.map(format_node, self.nodes))
        self._formatted = True

    def _properties(self, node: KafkaNode) -> str:
        count = len(self.nodes)
        replicas = str(min(3, count))
        voters = ",".join(f"{n.node_id}@{n.address(_CONTROLLER)}" for n in self.nodes)
        listeners = [*self.listeners, _CONTROLLER]
        config: dict[str, str] = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "controller.listener.names": _CONTROLLER,
            "inter.broker.listener.name": PLAINTEXT,
            "listeners": ",".join(f"{name}://{node.address(name)}" for name in listeners),
            "advertised.listeners": ",".join(
                f"{name}://{node.address(name)}" for name in self.listeners
            ),
            "listener.security.protocol.map": ",".join(
                f"{name}:{_PROTOCOLS[name]}" for name in listeners
            ),
            "log.dirs": str(node.data_dir),
            # Internal topics as a production cluster of this size has them, fewer partitions
            # (the first consumer group creates __consumer_offsets: 50 would take seconds).
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "6",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": str(min(2, count)),
            "transaction.state.log.num.partitions": "6",
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": str(min(2, count)),
            "min.insync.replicas": str(min(2, count)),
            "default.replication.factor": replicas,
            "group.initial.rebalance.delay.ms": "0",
            # The tests run consumer groups with 2 s session timeouts (the broker's floor is 6 s).
            "group.min.session.timeout.ms": "1000",
            # A dead node is fenced after 6 s rather than 9 s: failover tests stay short.
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "1000",
            "num.network.threads": "2",
            "num.io.threads": "4",
            "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
        }
        if self.users:
            config["sasl.enabled.mechanisms"] = ",".join(SASL_MECHANISMS)
            plain_users = " ".join(f'user_{n}="{p}"' for n, p in self.users.items())
            for listener in (SASL_PLAINTEXT, SASL_SSL):
                if listener not in self.listeners:
                    continue
                prefix = f"listener.name.{listener.lower()}"
                config[f"{prefix}.plain.sasl.jaas.config"] = (
                    f"org.apache.kafka.common.security.plain.PlainLoginModule required"
                    f" {plain_users};"
                )
                for mechanism in _SCRAM_MECHANISMS:
                    config[f"{prefix}.{mechanism.lower()}.sasl.jaas.config"] = (
                        "org.apache.kafka.common.security.scram.ScramLoginModule required;"
                    )
        if self.tls is not None:
            keystore = node.directory / "keystore.pem"
            keystore.write_bytes(self.tls.key.read_bytes() + self.tls.cert_chain.read_bytes())
            config.update(
                {
                    "ssl.keystore.type": "PEM",
                    "ssl.keystore.location": str(keystore),
                    "ssl.truststore.type": "PEM",
                    "ssl.truststore.location": str(self.tls.client_ca),
                    "listener.name.mtls.ssl.client.auth": "required",
                    # A client certificate's principal is its CN: User:bridge, not User:CN=...
                    "ssl.principal.mapping.rules": "RULE:^CN=([^,]+).*$/$1/,DEFAULT",
                }
            )
        if self.authorizer:
            config["authorizer.class.name"] = (
                "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            )
            config["super.users"] = "User:ANONYMOUS"
        config.update(self._broker_config)
        return "".join(f"{key}={_escape(value)}\n" for key, value in config.items())
