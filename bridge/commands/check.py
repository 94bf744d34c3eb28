"""`apizee-bridge check`: a preflight of a deployment before Apizee's traffic arrives.

One line per item, OK or what is wrong and how to fix it: the webhook authentication, each
bootstrap broker with the configured security, the brokers the cluster advertises, every topic
(partitions, replication, `min.insync.replicas`, `cleanup.policy`), this principal's rights on
them and on the poller's group, Apizee's REST API with the token. Read only: nothing is created
or written. What cannot be verified (a broker that reports no authorized operations, such as
tansu) is SKIP with the reason, never FAIL.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import aiohttp
from aiokafka.errors import KafkaError
from apizee_session_events.registry import (
    CONTENT_TYPE,
    basic_auth_header,
    error_message,
    ssl_context,
)

from bridge.apizee import ApizeeClient
from bridge.catalog import EVENTS
from bridge.codec import Codec
from bridge.commands.cluster import (
    AclOperation,
    ClusterClient,
    ClusterError,
    TopicInfo,
    bootstrap_addresses,
    principal,
    quiet_client_logs,
)
from bridge.commands.cluster import probe_broker as _probe_broker
from bridge.config import NO_WEBHOOK_AUTH_FIX, BridgeSettings, env_name
from bridge.errors import (
    ApizeeAuthError,
    ApizeeError,
    ApizeeNotFoundError,
    ApizeeUnavailableError,
    TransactionalIdDeniedError,
    TransactionsUnavailableError,
)
from bridge.exactly_once import intake_group, probe_transactions
from bridge.publisher import TopicNames
from bridge.registry import subject_name

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1

# Replication the bridge gives topics it creates when the setting is -1 (publisher.py).
_DEFAULT_REPLICATION: Final = 3


class Status(StrEnum):
    OK = "OK"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass(frozen=True, slots=True)
class Finding:
    """One checked item: its status, what was found, and (when it failed) the fix."""

    status: Status
    item: str
    detail: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.status.value:<5} {self.item}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _ok(item: str, detail: str) -> Finding:
    return Finding(Status.OK, item, detail)


def _fail(item: str, detail: str, fix: str) -> Finding:
    return Finding(Status.FAIL, item, detail, fix)


def _skip(item: str, detail: str) -> Finding:
    return Finding(Status.SKIP, item, detail)


# Why rights go unchecked when the broker does not say (KIP-430 added authorized operations to
# Metadata and DescribeGroups in Kafka 2.3; tansu does not fill them in).
_NO_AUTHORIZED_OPERATIONS: Final = (
    "not checked: the broker reports no authorized operations (tansu, or Kafka before 2.3);"
    " check the ACLs by hand (kafka-acls.sh --list)"
)


class Preflight:
    """Runs the checks in order, printing each finding's line through `out` once known."""

    def __init__(
        self,
        settings: BridgeSettings,
        out: Callable[[str], None],
        *,
        timeout: float = 10.0,
        apizee_ticket: int = 1,
    ) -> None:
        self.settings = settings
        self._out = out
        self.timeout = timeout
        self.apizee_ticket = apizee_ticket
        self.findings: list[Finding] = []
        # Topics whose rights the broker did not report: one SKIP line says so for all.
        self._rights_unknown: list[str] = []
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.polling = settings.poller.enabled and settings.apizee.base_url is not None
        self.exactly_once = settings.delivery.guarantee == "exactly_once"
        # Compacted (ticket states), and read as well as written by the bridge.
        self.compacted = {self.topics.state, self.topics.intake_state}
        self.read_too = {*self.compacted, self.topics.intake}

    def _add(self, finding: Finding) -> None:
        self.findings.append(finding)
        self._out(finding.line())

    @property
    def failed(self) -> int:
        return sum(1 for f in self.findings if f.status is Status.FAIL)

    @property
    def required_topics(self) -> list[str]:
        intake = [self.topics.intake, self.topics.intake_state] if self.exactly_once else []
        return self.topics.events() + ([self.topics.state] if self.polling else []) + intake

    @property
    def principal(self) -> str:
        return principal(self.settings.kafka)

    async def run(self) -> int:
        settings = self.settings
        auth = settings.auth
        if auth.methods:
            auth_text = ", ".join(auth.methods)
        elif auth.insecure_no_auth:
            auth_text = f"none ({env_name('auth', 'insecure_no_auth')})"
        else:
            auth_text = "not configured"
        self._add(
            _ok(
                "configuration",
                f"valid; topics {self.topics.prefix}.*, poller"
                f" {'on' if self.polling else 'off'}, webhook auth {auth_text}, delivery"
                f" {settings.delivery.guarantee}",
            )
        )
        if not auth.methods and not auth.insecure_no_auth:
            self._add(
                _fail(
                    "webhook auth",
                    "no method configured: `apizee-bridge run` refuses to start without one",
                    NO_WEBHOOK_AUTH_FIX,
                )
            )
        reachable = await self._brokers()
        if reachable:
            await self._cluster()
            if self.exactly_once:
                await self._transactions()
        else:
            self._add(Finding(Status.SKIP, "topics and rights", "not checked: no broker reachable"))
        await self._apizee()
        await self._registry()
        return EXIT_FAILED if self.failed else EXIT_OK

    # -- brokers -------------------------------------------------------------------------

    async def _brokers(self) -> int:
        kafka = self.settings.kafka
        try:
            addresses = bootstrap_addresses(kafka)
        except ClusterError as exc:
            self._add(_fail("bootstrap servers", exc.what, exc.fix))
            return 0
        reachable = 0
        for host, port in addresses:
            item = f"broker {host}:{port}"
            try:
                how = await _probe_broker(kafka, host, port, self.timeout)
            except ClusterError as exc:
                self._add(_fail(item, exc.what.removeprefix(f"{item}: "), exc.fix))
                continue
            reachable += 1
            self._add(_ok(item, f"reachable ({how})"))
        return reachable

    # -- cluster, topics, rights -----------------------------------------------------------

    async def _cluster(self) -> None:
        kafka = self.settings.kafka
        try:
            async with asyncio.timeout(self.timeout * 3):
                async with ClusterClient(kafka) as cluster:
                    info = await cluster.describe(self.required_topics)
                    await self._advertised(info.brokers)
                    present = [t for t in self.required_topics if info.topics[t].exists]
                    configs = await cluster.topic_configs(present) if present else {}
                    brokers = len(info.brokers)
                    for topic in self.required_topics:
                        self._topic(info.topics[topic], configs.get(topic), brokers)
                    if self._rights_unknown:
                        self._add(
                            _skip(
                                f"rights of {self.principal} on"
                                f" {_count(len(self._rights_unknown), 'topic')}",
                                _NO_AUTHORIZED_OPERATIONS,
                            )
                        )
                    if self.polling:
                        group = self.settings.poller.group_id
                        self._group(group, await cluster.group_operations(group))
                    if self.exactly_once:
                        self._intake_partitions(info.topics)
                        group = intake_group(self.settings)
                        self._group(group, await cluster.group_operations(group), intake=True)
        except ClusterError as exc:
            self._add(_fail("cluster", exc.what, exc.fix))
        except (KafkaError, OSError, TimeoutError) as exc:
            self._add(
                _fail(
                    "cluster",
                    f"describing the topics failed: {type(exc).__name__}",
                    f"check that the brokers are healthy; run again with"
                    f" {env_name('log', 'level')}=DEBUG for the details",
                )
            )

    async def _advertised(self, brokers: tuple[tuple[int, str, int], ...]) -> None:
        """The addresses the brokers advertise are what clients use after bootstrapping."""
        kafka = self.settings.kafka
        unreachable = []
        for node_id, host, port in brokers:
            try:
                await _probe_broker(kafka, host, port, self.timeout)
            except ClusterError as exc:
                unreachable.append(f"node {node_id} at {host}:{port} ({exc.what})")
        listed = ", ".join(f"{n}@{h}:{p}" for n, h, p in brokers)
        if unreachable:
            self._add(
                _fail(
                    "cluster",
                    f"{_count(len(brokers), 'broker')} advertised ({listed}); unreachable:"
                    f" {'; '.join(unreachable)}",
                    "the brokers' advertised.listeners must be addresses this pod can reach"
                    " with the configured security",
                )
            )
        else:
            self._add(
                _ok(
                    "cluster",
                    f"{_count(len(brokers), 'broker')} advertised, all reachable ({listed})",
                )
            )

    def _expected_replication(self, brokers: int) -> int:
        wanted = self.settings.kafka.topic_replication_factor
        return max(1, min(_DEFAULT_REPLICATION, brokers)) if wanted == -1 else wanted

    def _topic(self, info: TopicInfo, config: dict[str, str] | str | None, brokers: int) -> None:
        kafka = self.settings.kafka
        topic = info.name
        item = f"topic {topic}"
        state = topic in self.read_too
        if info.denied:
            self._add(
                _fail(
                    item,
                    f"not visible to {self.principal} (missing, or DESCRIBE denied)",
                    f"create it, or grant {self.principal} WRITE"
                    f"{' and READ' if state else ''} on it (WRITE implies DESCRIBE)",
                )
            )
            return
        if not info.exists:
            creates = "the bridge creates it at start-up" if kafka.create_topics else "create it"
            compact = " --config cleanup.policy=compact" if topic in self.compacted else ""
            self._add(
                _fail(
                    item,
                    "missing",
                    f"{creates} (or: kafka-topics.sh --create --topic {topic} --partitions"
                    f" {kafka.topic_partitions} --replication-factor"
                    f" {self._expected_replication(brokers)}{compact})",
                )
            )
            return
        problems: list[tuple[str, str]] = []
        facts = [f"{info.partitions} partitions", f"replication {info.replication}"]
        # The setting only shapes the topics the bridge creates: existing ones are compared
        # with it when it is set (replicas and the platform team must agree), not with its
        # default.
        if (
            "topic_partitions" in kafka.model_fields_set
            and info.partitions != kafka.topic_partitions
        ):
            problems.append(
                (
                    f"{info.partitions} partitions, {env_name('kafka', 'topic_partitions')} says"
                    f" {kafka.topic_partitions}",
                    f"set {env_name('kafka', 'topic_partitions')}={info.partitions} to match"
                    " the provisioned topics (every replica must agree)",
                )
            )
        expected_rf = self._expected_replication(brokers)
        if info.replication < expected_rf:
            problems.append(
                (
                    f"replication factor {info.replication}, expected {expected_rf}",
                    "reassign its partitions to more brokers (kafka-reassign-partitions.sh)",
                )
            )
        if isinstance(config, str):
            problems.append(
                (
                    f"its configuration cannot be read ({config})",
                    f"grant {self.principal} DESCRIBE_CONFIGS on it (read only), or check"
                    " min.insync.replicas and cleanup.policy by hand",
                )
            )
        elif config is not None:
            problems.extend(self._config_problems(topic, info.replication, config, facts))
        problems.extend(self._rights_problems(info, state))
        rights_unknown = info.may(AclOperation.WRITE) is None
        if rights_unknown:
            self._rights_unknown.append(topic)
        if problems:
            what = "; ".join(p for p, _ in problems)
            fix = "; ".join(dict.fromkeys(f for _, f in problems))
            self._add(_fail(item, what, fix))
        elif rights_unknown:
            self._add(_ok(item, f"{', '.join(facts)}; rights not reported by the broker"))
        else:
            rights = "write and read" if state else "write"
            self._add(_ok(item, f"{', '.join(facts)}; {self.principal} may {rights}"))

    def _config_problems(
        self, topic: str, replication: int, config: dict[str, str], facts: list[str]
    ) -> list[tuple[str, str]]:
        problems = []
        alter = f"kafka-configs.sh --alter --entity-type topics --entity-name {topic} --add-config"
        isr_text = config.get("min.insync.replicas", "1")
        isr = int(isr_text) if isr_text.isdigit() else 1
        facts.append(f"min.insync.replicas {isr}")
        if isr > replication:
            problems.append(
                (
                    f"min.insync.replicas {isr} > replication {replication}: no write can succeed",
                    f"{alter} min.insync.replicas={max(1, replication - 1)}",
                )
            )
        elif replication > 1 and isr == replication:
            problems.append(
                (
                    f"min.insync.replicas {isr} = replication: one broker down blocks every"
                    " publish (webhooks answered 503)",
                    f"{alter} min.insync.replicas={replication - 1}",
                )
            )
        elif replication >= 3 and isr < 2:
            problems.append(
                (
                    f"min.insync.replicas {isr}: acks=all is only as durable as one replica",
                    f"{alter} min.insync.replicas=2",
                )
            )
        policy = {p.strip() for p in config.get("cleanup.policy", "delete").split(",")}
        facts.append(f"cleanup.policy {','.join(sorted(policy))}")
        if topic in self.compacted and policy != {"compact"}:
            problems.append(
                (
                    f"cleanup.policy {','.join(sorted(policy))}: the ticket state must be"
                    " compacted, not deleted by retention",
                    f"{alter} cleanup.policy=compact",
                )
            )
        elif topic not in self.compacted and "compact" in policy:
            problems.append(
                (
                    "cleanup.policy includes compact: events of one ticket share a key, so"
                    " compaction would drop all but its last event",
                    f"{alter} cleanup.policy=delete",
                )
            )
        return problems

    def _rights_problems(self, info: TopicInfo, state: bool) -> list[tuple[str, str]]:
        needed = [AclOperation.WRITE] + ([AclOperation.READ] if state else [])
        missing = [op for op in needed if info.may(op) is False]
        problems = []
        if missing:
            ops = " and ".join(op.name for op in missing)
            problems.append(
                (
                    f"{self.principal} may not {ops.lower()} it",
                    f"kafka-acls.sh --add --allow-principal {self.principal} --operation"
                    f" {' --operation '.join(op.name.capitalize() for op in missing)}"
                    f" --topic {info.name}",
                )
            )
        return problems

    def _group(
        self, group: str, operations: frozenset[AclOperation] | None, *, intake: bool = False
    ) -> None:
        item = f"consumer group {group}"
        who = "exactly_once's partition owners join it" if intake else "the poller joins it"
        if operations is not None and AclOperation.READ in operations:
            self._add(_ok(item, f"{self.principal} may read it ({who})"))
            return
        if operations is None:
            self._add(_skip(item, _NO_AUTHORIZED_OPERATIONS))
            return
        instead = (
            f" (its name follows {env_name('kafka', 'topic_prefix')})"
            if intake
            else f" (or set {env_name('poller', 'group_id')} to a group it may read)"
        )
        self._add(
            _fail(
                item,
                f"{self.principal} may not read it: {'no owner' if intake else 'the poller'}"
                " can join, /readyz stays 503",
                f"kafka-acls.sh --add --allow-principal {self.principal} --operation Read"
                f" --group {group}{instead}",
            )
        )

    def _intake_partitions(self, topics: Mapping[str, TopicInfo]) -> None:
        """exactly_once keeps a ticket's state in the intake-state partition of the same
        number as its intake partition: both topics need the same count."""
        intake, state = topics[self.topics.intake], topics[self.topics.intake_state]
        if not (intake.exists and state.exists) or intake.partitions == state.partitions:
            return
        self._add(
            _fail(
                "exactly_once",
                f"{intake.name} has {intake.partitions} partitions and {state.name}"
                f" {state.partitions}: a ticket's state must be in the partition of the same"
                " number; the bridge refuses to start",
                f"give both the same count (kafka-topics.sh --alter --topic {state.name}"
                f" --partitions {intake.partitions}, if {state.name} has fewer)",
            )
        )

    async def _transactions(self) -> None:
        """What `apizee-bridge run` probes before it joins the intake group."""
        item = "transactions"
        prefix = f"{self.topics.prefix}.intake-*"
        try:
            async with asyncio.timeout(self.timeout * 2):
                await probe_transactions(self.settings)
        except TransactionalIdDeniedError as exc:
            self._add(
                _fail(
                    item,
                    str(exc),
                    f"kafka-acls.sh --add --allow-principal {self.principal} --operation Write"
                    f" --operation Describe --transactional-id {self.topics.prefix}.intake-"
                    " --resource-pattern-type prefixed",
                )
            )
        except TransactionsUnavailableError as exc:
            self._add(_fail(item, str(exc), "see docs/exactly-once.md (Kafka, ACLs)"))
        except (KafkaError, OSError, TimeoutError) as exc:
            self._add(
                _fail(
                    item,
                    f"no answer to InitProducerId within {self.timeout * 2:g}s"
                    f" ({type(exc).__name__}): a transaction coordinator may be down",
                    "check that the brokers are healthy, then run `apizee-bridge check` again",
                )
            )
        else:
            self._add(_ok(item, f"InitProducerId answered; {self.principal} may use {prefix}"))

    # -- Apizee ----------------------------------------------------------------------------

    async def _apizee(self) -> None:
        apizee = self.settings.apizee
        if apizee.base_url is None:
            self._add(
                Finding(
                    Status.SKIP,
                    "Apizee REST API",
                    f"not configured ({env_name('apizee', 'base_url')} unset: no poller)",
                )
            )
            return
        item = f"Apizee REST API {apizee.base_url}"
        # One request: no retries, the client's rate limit still applies.
        once = apizee.model_copy(update={"max_retries": 0, "request_timeout_seconds": self.timeout})
        try:
            async with ApizeeClient(once) as client:
                await client.fetch_events(self.apizee_ticket)
        except ApizeeNotFoundError:
            self._add(_ok(item, f"token accepted (ticket {self.apizee_ticket}: 404, as expected)"))
        except ApizeeAuthError as exc:
            self._add(
                _fail(
                    item,
                    f"token refused ({exc.status})",
                    f"put a valid token in {env_name('apizee', 'token')} or"
                    f" {env_name('apizee', 'token_file')}; 403 means its role may not read"
                    " ticket events",
                )
            )
        except ApizeeUnavailableError as exc:
            self._add(
                _fail(
                    item,
                    f"unreachable ({exc.kind}{f' {exc.status}' if exc.status else ''})",
                    f"check {env_name('apizee', 'base_url')} and the egress path (proxy,"
                    " NetworkPolicy, DNS)",
                )
            )
        except ApizeeError as exc:
            self._add(
                _fail(
                    item,
                    f"refused the request ({exc.status})",
                    f"check {env_name('apizee', 'base_url')}: it should be the API's root",
                )
            )
        else:
            self._add(_ok(item, f"token accepted (ticket {self.apizee_ticket} listed)"))

    # -- schema registry ---------------------------------------------------------------------

    def _subjects(self) -> set[str]:
        """The subjects the bridge registers its schemas under (as bridge.app names them)."""
        strategy = self.settings.schema.subject_strategy
        subjects = set()
        for event_type, writer in Codec().writers.items():
            spec = EVENTS.get(event_type)
            topic = self.topics.category(spec.category) if spec else self.topics.unknown
            subjects.add(subject_name(strategy, topic, writer.full_name))
        return subjects

    async def _registry(self) -> None:
        schema = self.settings.schema
        url = schema.registry_url
        if url is None:
            self._add(
                Finding(
                    Status.SKIP,
                    "schema registry",
                    f"not configured ({env_name('schema', 'registry_url')} unset): records are"
                    " framed as Avro single-object encoding",
                )
            )
            return
        item = f"schema registry {url}"
        headers = {"Accept": CONTENT_TYPE}
        if schema.registry_username is not None and schema.registry_password is not None:
            headers["Authorization"] = basic_auth_header(
                schema.registry_username, schema.registry_password.get_secret_value()
            )
        context = ssl_context(schema.registry_ca_file)
        timeout = aiohttp.ClientTimeout(total=min(self.timeout, schema.registry_timeout_seconds))
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=timeout,
                    headers=headers,
                    connector=aiohttp.TCPConnector(ssl=context if context is not None else True),
                ) as session,
                session.get(f"{url}/subjects") as response,
            ):
                status = response.status
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            cause = "no answer in time" if isinstance(exc, TimeoutError) else type(exc).__name__
            self._add(
                _fail(
                    item,
                    f"unreachable ({cause})",
                    f"check {env_name('schema', 'registry_url')}, the egress path and, for"
                    f" https with a private CA, {env_name('schema', 'registry_ca_file')}",
                )
            )
            return
        if status in (401, 403):
            self._add(
                _fail(
                    item,
                    f"refused the credentials ({status})",
                    f"check {env_name('schema', 'registry_username')} and"
                    f" {env_name('schema', 'registry_password')}",
                )
            )
            return
        try:
            listed = json.loads(body) if status == 200 else None
        except ValueError:
            listed = None
        if not isinstance(listed, list):
            hint = " (Apicurio: .../apis/ccompat/v7)" if status == 404 else ""
            self._add(
                _fail(
                    item,
                    f"no Confluent-compatible API there (GET /subjects answered {status}:"
                    f" {error_message(body)})",
                    f"set {env_name('schema', 'registry_url')} to the API's root{hint}",
                )
            )
            return
        wanted = self._subjects()
        registered = len(wanted & {str(s) for s in listed})
        note = "" if registered == len(wanted) else " (the bridge registers the others at start)"
        self._add(
            _ok(
                item,
                f"reachable; {registered} of the bridge's {len(wanted)} subjects registered{note}",
            )
        )


async def run_check(
    settings: BridgeSettings,
    out: Callable[[str], None],
    *,
    within: float,
    apizee_ticket: int,
) -> int:
    """Run every check, one line each through `out`, then a summary; EXIT_OK only when all
    pass."""
    # Every failure is reported on its line: aiokafka's own error logs would only repeat them.
    with quiet_client_logs():
        preflight = Preflight(settings, out, timeout=within, apizee_ticket=apizee_ticket)
        code = await preflight.run()
    total = sum(1 for f in preflight.findings if f.status is not Status.SKIP)
    if code == EXIT_OK:
        out(f"check: all {total} checks passed")
    else:
        out(f"check: {preflight.failed} of {total} checks failed")
    return code
