"""Run `apizee-bridge` commands as processes and administer the secured test cluster."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

from bridge.devtools.devbroker import KafkaCluster
from bridge.publisher import TopicNames
from tests.integration.bridgeproc import bridge_command, process_env

TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def line(self, start: str) -> str:
        """The one stdout line starting with `start`."""
        found = [line for line in self.lines if line.startswith(start)]
        assert len(found) == 1, f"{start!r} in:\n{self.stdout}\n{self.stderr[-2000:]}"
        return found[0]

    def __str__(self) -> str:
        return f"exit {self.code}\nstdout:\n{self.stdout}\nstderr (tail):\n{self.stderr[-3000:]}"


async def run_cli(*args: str, env: Mapping[str, str], within: float = TIMEOUT) -> Ran:
    """`apizee-bridge ARGS` to its end; its exit status and output."""
    process = await asyncio.create_subprocess_exec(
        *bridge_command(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    return await finish(process, within)


async def finish(process: asyncio.subprocess.Process, within: float) -> Ran:
    """A process started with pipes and a session of its own, to its end: its output read,
    and its whole process group killed if it is not done within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def kafka_only_env(bootstrap: str, prefix: str) -> dict[str, str]:
    """command_env() without any webhook authentication: what the read-only commands need."""
    return {
        name: value
        for name, value in command_env(bootstrap, prefix).items()
        if not name.startswith("BRIDGE_AUTH_")
    }


@contextlib.asynccontextmanager
async def cli_process(
    *args: str, env: Mapping[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`apizee-bridge ARGS` running (stdout piped); killed on exit if still running."""
    process = await asyncio.create_subprocess_exec(
        *bridge_command(*args),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()


def command_env(bootstrap: str, prefix: str, **variables: str) -> dict[str, str]:
    """A bridge's environment for the commands: console logs, the test's topics."""
    return process_env(bootstrap, prefix, BRIDGE_LOG_FORMAT="console", **variables)


@dataclass(frozen=True)
class Secured:
    """The secured cluster: SASL users, ACLs enforced, ANONYMOUS on PLAINTEXT a super user."""

    cluster: KafkaCluster
    users: Mapping[str, str]

    @property
    def plaintext(self) -> str:
        return self.cluster.bootstrap_servers

    @property
    def sasl(self) -> str:
        return self.cluster.bootstrap("SASL_PLAINTEXT")

    def admin(self) -> AdminClient:
        return AdminClient({"bootstrap.servers": self.plaintext})

    def env(
        self, prefix: str, user: str, password: str | None = None, **variables: str
    ) -> dict[str, str]:
        """The environment of a command run as `user` over SASL (SCRAM-SHA-512)."""
        return command_env(
            self.sasl,
            prefix,
            BRIDGE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
            BRIDGE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
            BRIDGE_KAFKA_SASL_USERNAME=user,
            BRIDGE_KAFKA_SASL_PASSWORD=password if password is not None else self.users[user],
            **variables,
        )

    def create_topics(
        self,
        prefix: str,
        *,
        partitions: int = 3,
        state: bool = False,
        configs: Mapping[str, Mapping[str, str]] | None = None,
    ) -> list[str]:
        """The bridge's topics of `prefix`, as a platform team would provision them."""
        names = TopicNames(prefix)
        topics = names.events() + ([names.state] if state else [])
        wanted = [
            NewTopic(
                t,
                partitions,
                1,
                config=dict(
                    (configs or {}).get(
                        t, {"cleanup.policy": "compact"} if t == names.state else {}
                    )
                ),
            )
            for t in topics
        ]
        admin = self.admin()  # referenced until the futures are done
        for future in admin.create_topics(wanted).values():
            future.result()
        return topics

    def allow(
        self,
        user: str,
        operations: Iterable[AclOperation],
        *,
        topic_prefix: str | None = None,
        topic: str | None = None,
        group: str | None = None,
        group_prefix: str | None = None,
    ) -> None:
        bindings = []
        for operation in operations:
            if topic_prefix is not None:
                bindings.append(
                    _acl(
                        ResourceType.TOPIC,
                        topic_prefix,
                        ResourcePatternType.PREFIXED,
                        user,
                        operation,
                    )
                )
            if topic is not None:
                bindings.append(
                    _acl(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, user, operation)
                )
            if group is not None:
                bindings.append(
                    _acl(ResourceType.GROUP, group, ResourcePatternType.LITERAL, user, operation)
                )
            if group_prefix is not None:
                bindings.append(
                    _acl(
                        ResourceType.GROUP,
                        group_prefix,
                        ResourcePatternType.PREFIXED,
                        user,
                        operation,
                    )
                )
        admin = self.admin()
        for future in admin.create_acls(bindings).values():
            future.result()


def _acl(
    resource: ResourceType,
    name: str,
    pattern: ResourcePatternType,
    user: str,
    operation: AclOperation,
) -> AclBinding:
    return AclBinding(
        resource, name, pattern, f"User:{user}", "*", operation, AclPermissionType.ALLOW
    )
