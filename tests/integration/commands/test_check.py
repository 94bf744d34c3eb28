"""`apizee-bridge check` as a process against real brokers: a deployment that passes, a broker
down, a principal without rights and topics configured wrong (then fixed), a refused Apizee
token, tansu (which reports no rights: SKIP, not FAIL), partitions against the setting in force,
missing webhook auth, bad arguments and an invalid configuration."""

from __future__ import annotations

import re

import pytest
from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from bridge.devtools.devbroker import TansuBroker, free_port
from bridge.devtools.simulator import ApizeeRestServer
from bridge.publisher import TopicNames
from tests.integration.commands.clikit import Secured, command_env, run_cli
from tests.integration.pollerkit import capture_tracking, poller_settings, replica

pytestmark = pytest.mark.integration

SIM_TOKEN = "simulator-token"


async def test_a_running_deployment_passes_every_check(
    kafka_bootstrap: str, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rest = ApizeeRestServer(lambda _t: None, token=SIM_TOKEN)
    await rest.start()
    group = f"{topic_prefix}.bridge"
    settings = poller_settings(
        kafka_bootstrap,
        topic_prefix,
        rest.url,
        poller={"group_session_timeout_ms": 6000, "group_heartbeat_interval_ms": 1000},
    )
    try:
        async with replica(settings, capture_tracking(monkeypatch)):
            env = command_env(
                kafka_bootstrap,
                topic_prefix,
                BRIDGE_KAFKA_TOPIC_PARTITIONS="4",
                BRIDGE_APIZEE_BASE_URL=rest.url,
                BRIDGE_APIZEE_TOKEN=SIM_TOKEN,
                BRIDGE_POLLER_GROUP_ID=group,
            )
            ran = await run_cli("check", env=env)
    finally:
        await rest.stop()
    print(f"\n{ran.stdout}")
    assert ran.code == 0, ran
    topics = TopicNames(topic_prefix)
    for topic in [*topics.events(), topics.state]:
        line = ran.line(f"OK    topic {topic}:")
        assert "4 partitions, replication 1" in line, line
        assert "may write" in line
    assert "cleanup.policy compact" in ran.line(f"OK    topic {topics.state}:")
    assert "cleanup.policy delete" in ran.line(f"OK    topic {topics.dlq}:")
    ran.line(f"OK    consumer group {group}:")
    ran.line(f"OK    broker {kafka_bootstrap}: reachable (PLAINTEXT)")
    assert "token accepted" in ran.line("OK    Apizee REST API")
    assert ran.lines[-1] == "check: all 15 checks passed"
    assert not [line for line in ran.lines if line.startswith("FAIL")]


async def test_a_broker_down_is_named_with_the_fix(kafka_bootstrap: str, topic_prefix: str) -> None:
    down = f"127.0.0.1:{free_port()}"
    # One of two bootstrap brokers down: the other still answers, the cluster is checked.
    env = command_env(f"{kafka_bootstrap},{down}", topic_prefix)
    ran = await run_cli("check", "--timeout", "3", env=env)
    assert ran.code == 1, ran
    line = ran.line(f"FAIL  broker {down}:")
    assert "connection refused" in line
    assert "Fix: is a broker listening there? check BRIDGE_KAFKA_BOOTSTRAP_SERVERS" in line
    ran.line(f"OK    broker {kafka_bootstrap}:")
    # Nothing of this prefix exists yet: each topic says how to create it.
    assert "missing. Fix: the bridge creates it at start-up" in ran.line(
        f"FAIL  topic {topic_prefix}.dlq:"
    )
    # Every bootstrap broker down: nothing more can be checked, and it is said so.
    ran = await run_cli("check", "--timeout", "3", env=command_env(down, topic_prefix))
    assert ran.code == 1, ran
    assert "connection refused" in ran.line(f"FAIL  broker {down}:")
    ran.line("SKIP  topics and rights: not checked: no broker reachable")
    assert re.fullmatch(r"check: 1 of 2 checks failed", ran.lines[-1]), ran


async def test_missing_rights_and_wrong_topic_configs_are_named_then_pass_once_fixed(
    secured: Secured, topic_prefix: str
) -> None:
    topics = TopicNames(topic_prefix)
    group = f"{topic_prefix}.group"
    secured.create_topics(
        topic_prefix,
        state=True,
        # A state topic deleted by retention, an event topic compacted: both wrong.
        configs={
            topics.state: {"cleanup.policy": "delete"},
            topics.dlq: {"cleanup.policy": "compact"},
        },
    )
    rest = ApizeeRestServer(lambda _t: None, token=SIM_TOKEN)
    await rest.start()
    apizee = {
        "BRIDGE_KAFKA_TOPIC_PARTITIONS": "3",
        "BRIDGE_APIZEE_BASE_URL": rest.url,
        "BRIDGE_APIZEE_TOKEN": SIM_TOKEN,
        "BRIDGE_POLLER_GROUP_ID": group,
    }
    try:
        # A principal with no right at all sees nothing.
        ran = await run_cli("check", env=secured.env(topic_prefix, "nobody", **apizee))
        assert ran.code == 1, ran
        assert "reachable (SASL_PLAINTEXT SCRAM-SHA-512 as nobody)" in ran.line("OK    broker")
        for topic in [*topics.events(), topics.state]:
            line = ran.line(f"FAIL  topic {topic}:")
            assert "not visible to User:nobody (missing, or DESCRIBE denied)" in line, line
        assert "User:nobody may not read it" in ran.line(f"FAIL  consumer group {group}:")

        # The bridge's user may write the topics (and read their configs), not yet read the
        # state topic nor the group.
        secured.allow(
            "bridge",
            [AclOperation.WRITE, AclOperation.DESCRIBE_CONFIGS],
            topic_prefix=f"{topic_prefix}.",
        )
        ran = await run_cli("check", env=secured.env(topic_prefix, "bridge", **apizee))
        print(f"\n{ran.stdout}")
        assert ran.code == 1, ran
        assert "User:bridge may write" in ran.line(f"OK    topic {topic_prefix}.ticket:")
        state = ran.line(f"FAIL  topic {topics.state}:")
        assert "cleanup.policy delete: the ticket state must be compacted" in state
        assert "User:bridge may not read it" in state
        assert "--add-config cleanup.policy=compact" in state
        assert "--operation Read --topic" in state
        dlq = ran.line(f"FAIL  topic {topics.dlq}:")
        assert "compaction would drop all but its last event" in dlq
        assert "--add-config cleanup.policy=delete" in dlq
        assert "kafka-acls.sh --add --allow-principal User:bridge --operation Read --group" in (
            ran.line(f"FAIL  consumer group {group}:")
        )
        assert ran.lines[-1] == "check: 3 of 15 checks failed", ran

        # Fixed as the lines say: every check passes.
        secured.allow("bridge", [AclOperation.READ], topic=topics.state, group=group)
        admin = secured.admin()
        for topic, policy in ((topics.state, "compact"), (topics.dlq, "delete")):
            resource = ConfigResource(
                ConfigResource.Type.TOPIC,
                topic,
                incremental_configs=[
                    ConfigEntry(
                        "cleanup.policy", policy, incremental_operation=AlterConfigOpType.SET
                    )
                ],
            )
            for future in admin.incremental_alter_configs([resource]).values():
                future.result()
        ran = await run_cli("check", env=secured.env(topic_prefix, "bridge", **apizee))
        assert ran.code == 0, ran

        # A wrong password: the broker line says so, nothing else is asked.
        ran = await run_cli(
            "check", env=secured.env(topic_prefix, "bridge", password="wrong", **apizee)
        )
        assert ran.code == 1, ran
        line = ran.line("FAIL  broker")
        assert "SASL authentication failed (SCRAM-SHA-512 as 'bridge')" in line
        assert "Fix: check BRIDGE_KAFKA_SASL_USERNAME, BRIDGE_KAFKA_SASL_PASSWORD" in line
        # A PLAINTEXT client on the SASL listener.
        env = secured.env(topic_prefix, "bridge", **apizee)
        for name in ("MECHANISM", "USERNAME", "PASSWORD"):
            del env[f"BRIDGE_KAFKA_SASL_{name}"]
        env["BRIDGE_KAFKA_SECURITY_PROTOCOL"] = "PLAINTEXT"
        ran = await run_cli("check", "--timeout", "5", env=env)
        assert ran.code == 1, ran
        assert "does this listener expect PLAINTEXT?" in ran.line("FAIL  broker")
    finally:
        await rest.stop()


async def test_a_refused_apizee_token_is_named(kafka_bootstrap: str, topic_prefix: str) -> None:
    rest = ApizeeRestServer(lambda _t: None, token=SIM_TOKEN)
    await rest.start()
    try:
        env = command_env(
            kafka_bootstrap,
            topic_prefix,
            BRIDGE_APIZEE_BASE_URL=rest.url,
            BRIDGE_APIZEE_TOKEN="expired-token",
        )
        ran = await run_cli("check", "--timeout", "3", env=env)
    finally:
        await rest.stop()
    assert ran.code == 1, ran
    line = ran.line(f"FAIL  Apizee REST API {rest.url}:")
    assert "token refused (401)" in line
    assert "BRIDGE_APIZEE_TOKEN" in line
    # One request: no retry, no loop.
    assert len(rest.requests) == 1


async def test_bad_arguments_and_an_invalid_configuration_exit_2(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    env = command_env(kafka_bootstrap, topic_prefix)
    for args in (["--timeout", "-1"], ["--timeout", "soon"], ["--apizee-ticket", "x"], ["--nope"]):
        ran = await run_cli("check", *args, env=env)
        assert ran.code == 2, (args, str(ran))
        assert "usage: apizee-bridge" in ran.stderr
    ran = await run_cli("check", env={**env, "BRIDGE_KAFKA_LINGER_MS": "soon"})
    assert ran.code == 2, ran
    assert ran.line("FAIL  configuration: BRIDGE_KAFKA_LINGER_MS:").startswith(
        "FAIL  configuration: BRIDGE_KAFKA_LINGER_MS: Input should be a valid integer"
    )


def _provision(bootstrap: str, prefix: str, partitions: int) -> list[str]:
    """The bridge's topics (state topic compacted), as a platform team would create them."""
    topics = TopicNames(prefix)
    wanted = [
        NewTopic(
            t,
            partitions,
            1,
            config={"cleanup.policy": "compact"} if t == topics.state else {},
        )
        for t in [*topics.events(), topics.state]
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})  # referenced until done
    for future in admin.create_topics(wanted).values():
        future.result()
    return [t.topic for t in wanted]


async def test_on_tansu_what_cannot_be_verified_is_skip_with_the_reason(
    tansu_broker: TansuBroker, topic_prefix: str
) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    topics = _provision(bootstrap, topic_prefix, partitions=3)
    rest = ApizeeRestServer(lambda _t: None, token=SIM_TOKEN)
    await rest.start()
    try:
        env = command_env(
            bootstrap,
            topic_prefix,
            BRIDGE_KAFKA_TOPIC_PARTITIONS="3",
            BRIDGE_APIZEE_BASE_URL=rest.url,
            BRIDGE_APIZEE_TOKEN=SIM_TOKEN,
        )
        ran = await run_cli("check", env=env)
    finally:
        await rest.stop()
    print(f"\n{ran.stdout}")
    assert ran.code == 0, ran
    assert not [line for line in ran.lines if line.startswith("FAIL")], ran
    # Each topic's own facts are checked; the rights it cannot see are said once, as SKIP.
    for topic in topics:
        line = ran.line(f"OK    topic {topic}:")
        assert "3 partitions, replication 1" in line, line
        assert "rights not reported by the broker" in line, line
    skip = ran.line(f"SKIP  rights of User:ANONYMOUS on {len(topics)} topics:")
    assert "the broker reports no authorized operations (tansu, or Kafka before 2.3)" in skip
    assert "kafka-acls.sh --list" in skip
    assert re.fullmatch(r"check: all \d+ checks passed", ran.lines[-1]), ran


async def test_partitions_are_compared_with_the_setting_in_force_not_its_default(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = _provision(kafka_bootstrap, topic_prefix, partitions=3)[:-1]  # no poller: events
    env = command_env(kafka_bootstrap, topic_prefix)
    # Unset, BRIDGE_KAFKA_TOPIC_PARTITIONS only shapes topics the bridge would create: the
    # provisioned ones are not held against its default of 6.
    del env["BRIDGE_KAFKA_TOPIC_PARTITIONS"]
    ran = await run_cli("check", env=env)
    assert ran.code == 0, ran
    for topic in topics:
        assert "3 partitions" in ran.line(f"OK    topic {topic}:")
    # Set, it must match: the topic line says by how much and which variable.
    ran = await run_cli("check", env={**env, "BRIDGE_KAFKA_TOPIC_PARTITIONS": "4"})
    assert ran.code == 1, ran
    for topic in topics:
        line = ran.line(f"FAIL  topic {topic}:")
        assert "3 partitions, BRIDGE_KAFKA_TOPIC_PARTITIONS says 4" in line, line
        assert "Fix: set BRIDGE_KAFKA_TOPIC_PARTITIONS=3" in line, line
    ran = await run_cli("check", env={**env, "BRIDGE_KAFKA_TOPIC_PARTITIONS": "3"})
    assert ran.code == 0, ran


async def test_missing_webhook_auth_is_one_fail_line_and_the_rest_is_checked(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    topics = _provision(kafka_bootstrap, topic_prefix, partitions=3)[:-1]
    env = command_env(kafka_bootstrap, topic_prefix)
    del env["BRIDGE_AUTH_TOKEN"]
    ran = await run_cli("check", env=env)
    assert ran.code == 1, ran
    assert "webhook auth not configured" in ran.line("OK    configuration:")
    fails = [line for line in ran.lines if line.startswith("FAIL")]
    assert len(fails) == 1, ran
    assert fails[0].startswith(
        "FAIL  webhook auth: no method configured: `apizee-bridge run` refuses to start"
        " without one. Fix: set BRIDGE_AUTH_HMAC_SECRET, BRIDGE_AUTH_TOKEN"
    ), fails[0]
    ran.line(f"OK    broker {kafka_bootstrap}:")
    for topic in topics:
        ran.line(f"OK    topic {topic}:")
    assert re.fullmatch(r"check: 1 of \d+ checks failed", ran.lines[-1]), ran


def _provision_intake(
    bootstrap: str, prefix: str, partitions: int, state: int, policy: str
) -> None:
    """exactly_once's intake topics as a platform team would create them (maybe wrongly)."""
    topics = TopicNames(prefix)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [
        NewTopic(topics.intake, partitions, 1),
        NewTopic(topics.intake_state, state, 1, config={"cleanup.policy": policy}),
    ]
    for future in admin.create_topics(wanted).values():
        future.result()


async def test_exactly_once_checks_the_intake_topics_group_and_transactions(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    """What `run` needs for exactly_once: both intake topics (the state one compacted, both
    read and written, the same partition count), the intake group, and transactions under
    the intake's transactional-id prefix."""
    _provision(kafka_bootstrap, topic_prefix, partitions=3)
    _provision_intake(kafka_bootstrap, topic_prefix, 3, 3, "compact")
    env = command_env(
        kafka_bootstrap,
        topic_prefix,
        BRIDGE_KAFKA_TOPIC_PARTITIONS="3",
        BRIDGE_DELIVERY_GUARANTEE="exactly_once",
    )
    ran = await run_cli("check", env=env)
    print(f"\n{ran.stdout}")
    assert ran.code == 0, ran
    topics = TopicNames(topic_prefix)
    assert "delivery exactly_once" in ran.line("OK    configuration:")
    for topic in (topics.intake, topics.intake_state):
        assert "may write and read" in ran.line(f"OK    topic {topic}:")
    assert "cleanup.policy compact" in ran.line(f"OK    topic {topics.intake_state}:")
    assert "partition owners join it" in ran.line(f"OK    consumer group {topic_prefix}.intake:")
    line = ran.line("OK    transactions:")
    assert f"may use {topic_prefix}.intake-*" in line, line

    # Provisioned wrongly: the state topic not compacted, and fewer partitions than the
    # intake (a ticket's state lives in the partition of the same number).
    wrong = f"{topic_prefix}w"
    _provision(kafka_bootstrap, wrong, partitions=3)
    _provision_intake(kafka_bootstrap, wrong, 3, 2, "delete")
    ran = await run_cli("check", env={**env, "BRIDGE_KAFKA_TOPIC_PREFIX": wrong})
    print(f"\n{ran.stdout}")
    assert ran.code == 1, ran
    wrong_topics = TopicNames(wrong)
    line = ran.line(f"FAIL  topic {wrong_topics.intake_state}:")
    assert "cleanup.policy delete: the ticket state must be compacted" in line, line
    line = ran.line("FAIL  exactly_once:")
    assert f"{wrong_topics.intake} has 3 partitions and {wrong_topics.intake_state} 2" in line
    assert "kafka-topics.sh --alter" in line


async def test_exactly_once_on_tansu_fails_the_transactions_check(
    tansu_broker: TansuBroker, topic_prefix: str
) -> None:
    bootstrap = tansu_broker.bootstrap_servers
    env = command_env(
        bootstrap,
        topic_prefix,
        BRIDGE_DELIVERY_GUARANTEE="exactly_once",
        BRIDGE_KAFKA_PUBLISH_TIMEOUT_SECONDS="2",
    )
    ran = await run_cli("check", "--timeout", "5", env=env)
    print(f"\n{ran.stdout}")
    assert ran.code == 1, ran
    line = ran.line("FAIL  transactions:")
    assert "needs a Kafka cluster with transactions" in line, line
    assert "tansu, the dev broker, has no transactions" in line, line


async def test_exactly_once_without_rights_on_the_transactional_ids_is_named(
    secured: Secured, topic_prefix: str
) -> None:
    secured.create_topics(topic_prefix, state=False)
    secured.allow(
        "bridge",
        [AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE_CONFIGS],
        topic_prefix=f"{topic_prefix}.",
    )
    env = secured.env(
        topic_prefix,
        "bridge",
        BRIDGE_KAFKA_TOPIC_PARTITIONS="3",
        BRIDGE_DELIVERY_GUARANTEE="exactly_once",
    )
    ran = await run_cli("check", env=env)
    print(f"\n{ran.stdout}")
    assert ran.code == 1, ran
    line = ran.line("FAIL  transactions:")
    assert f"may not use transactional ids {topic_prefix}.intake-*" in line, line
    assert "grant Write and Describe on that transactional-id prefix" in line, line
    fix = (
        "Fix: kafka-acls.sh --add --allow-principal User:bridge --operation Write --operation"
        f" Describe --transactional-id {topic_prefix}.intake- --resource-pattern-type prefixed"
    )
    assert fix in line, line

    # Granted as the line says (through the Admin API): transactions pass.
    bindings = [
        AclBinding(
            ResourceType.TRANSACTIONAL_ID,
            f"{topic_prefix}.intake-",
            ResourcePatternType.PREFIXED,
            "User:bridge",
            "*",
            operation,
            AclPermissionType.ALLOW,
        )
        for operation in (AclOperation.WRITE, AclOperation.DESCRIBE)
    ]
    admin = secured.admin()  # referenced until done
    for future in admin.create_acls(bindings).values():
        future.result()
    ran = await run_cli("check", env=env)
    assert f"may use {topic_prefix}.intake-*" in ran.line("OK    transactions:"), ran
