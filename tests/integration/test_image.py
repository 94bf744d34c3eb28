"""The image `make image` built, run the way the chart runs it: `make image-test`.

Marker `image`, left out of `make test` (pyproject's addopts); `make image-test` builds the image
(or finds why it cannot) and runs this file with `-m image`. The container's settings are read
from the chart's rendered Deployment and helm test Pod (user, read-only root file system,
capabilities, privilege escalation, the /tmp emptyDir), so a chart change is tested here too.
The host's network: the tests' Apache Kafka listens on loopback. Where this machine cannot
build or run containers, every test skips and says why; none passes without running the image.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import resource
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.devtools.devbroker import free_port
from bridge.devtools.release.version import read_version
from bridge.publisher import TopicNames
from tests.helmchart import render
from tests.integration.bridgeproc import (
    START_TIMEOUT,
    BridgeClient,
    bridge_env,
    bridge_process,
    webhook,
)
from tests.integration.readback import consume_async
from tests.integration.test_ingress import assert_event_record

pytestmark = [pytest.mark.image, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
RECORD = REPO / "build" / "image.json"
UNAVAILABLE = REPO / "build" / "image-unavailable.txt"
STOP_WITHIN = 30.0  # the chart's terminationGracePeriodSeconds is 35


# -- the chart's Pods as podman flags --------------------------------------------------------

# Every securityContext key the chart sets, each translated below: a key added to the chart
# fails here until this test runs the image with it too.
_POD_KEYS = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
_CONTAINER_KEYS = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "capabilities",
}
TOKEN = "image-test-token-0123456789"


@dataclass(frozen=True)
class ChartPod:
    """One of the chart's Pods (the Deployment's or the helm test's) for `podman run`."""

    args: list[str]  # the container's arguments (run; check --timeout N)
    flags: list[str]  # security context, volumes
    env: dict[str, str]  # the ConfigMap's data and the container's env


def _security_flags(pod: Mapping[str, Any], sc: Mapping[str, Any]) -> list[str]:
    pod_sc = pod["securityContext"]
    assert set(pod_sc) == _POD_KEYS, pod_sc
    assert set(sc) == _CONTAINER_KEYS, sc
    flags = ["--user", f"{pod_sc['runAsUser']}:{pod_sc['runAsGroup']}"]
    flags += ["--group-add", str(pod_sc["fsGroup"])]
    # RuntimeDefault: the runtime's default seccomp profile, which podman applies unasked.
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    if sc["readOnlyRootFilesystem"]:
        # podman would mount tmpfs on /tmp, /var/tmp and /run; Kubernetes mounts none.
        flags += ["--read-only", "--read-only-tmpfs=false"]
    assert sc["capabilities"] == {"drop": ["ALL"]}, sc["capabilities"]
    flags += ["--cap-drop", "all"]
    if sc["allowPrivilegeEscalation"] is False:
        flags += ["--security-opt", "no-new-privileges"]
    return flags


def chart_pod(kind: str, values: Mapping[str, Any], secrets_dir: Path) -> ChartPod:
    """The chart rendered with `values`: its `kind` Pod's settings, Secret files written."""
    docs = render(dict(values))
    (doc,) = [d for d in docs if d["kind"] == kind]
    pod = doc["spec"]["template"]["spec"] if kind == "Deployment" else doc["spec"]
    (container,) = pod["containers"]
    flags = _security_flags(pod, container["securityContext"])
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        (config_map,) = [
            d
            for d in docs
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == source["configMapRef"]["name"]
        ]
        env.update(config_map["data"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable["value"]  # valueFrom: none in the chart's defaults
    # The Pod has a network namespace of its own, where 0.0.0.0 is the Pod's address; on the
    # host's network (the tests' Kafka is on loopback) loopback stands in for it.
    env.update(BRIDGE_INGRESS_HOST="127.0.0.1", BRIDGE_ADMIN_HOST="127.0.0.1")

    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]]
        if "emptyDir" in source:
            size = source["emptyDir"]["sizeLimit"].replace("Mi", "m")
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1777"]
        elif "secret" in source:
            flags += ["--volume", f"{_secret_files(docs, pod, source, secrets_dir)}:"
                      f"{mount['mountPath']}:ro"]  # fmt: skip
        else:
            raise AssertionError(f"a volume this test does not mount yet: {source}")
    return ChartPod(list(container["args"]), flags, env)


def _secret_files(
    docs: list[dict[str, Any]], pod: Mapping[str, Any], volume: Mapping[str, Any], into: Path
) -> Path:
    """The Secret's keys as files, as the kubelet writes them (mode, group fsGroup)."""
    secret = volume["secret"]
    (data,) = [
        d["data"]
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"] == secret["secretName"]
    ]
    target = into / volume["name"]
    target.mkdir(parents=True, exist_ok=True)
    for item in secret["items"]:
        path = target / item["path"]
        path.write_bytes(base64.b64decode(data[item["key"]]))
        os.chown(path, 0, pod["securityContext"]["fsGroup"])
        path.chmod(secret["defaultMode"])
    return target


def chart_values(bootstrap: str, prefix: str) -> dict[str, Any]:
    return {
        "config": {
            "kafka": {"bootstrap_servers": bootstrap, "topic_prefix": prefix, "topic_partitions": 3}
        },
        "ports": {"public": free_port(), "admin": free_port()},
        "secrets": {"authToken": TOKEN},
        "helmTest": {"timeoutSeconds": 10},
    }


# -- podman on this machine ------------------------------------------------------------------


@dataclass(frozen=True)
class Image:
    ref: str  # the loaded image's id
    version: str
    labels: Mapping[str, str]
    machine: tuple[str, ...]  # what this host needs podman to be told (runtime, limits)

    def launcher(self, pod: ChartPod, name: str, *, entrypoint: str | None = None) -> list[str]:
        """`podman run` as the chart runs the container; its variables come from podman's own
        environment (`-e NAME`), so that secrets stay off the command line."""
        passed = [arg for key in sorted(pod.env) for arg in ("-e", key)]
        chosen = ["--entrypoint", entrypoint] if entrypoint else []
        return [
            "podman", "run", "--rm", "--name", name, "--network", "host", "--pull", "never",
            *self.machine, *pod.flags, *chosen, *passed, self.ref,
        ]  # fmt: skip


def _podman(*args: str, timeout: float = 60, env: Mapping[str, str] | None = None) -> Any:
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        check=False,
    )


def _machine_flags(ref: str) -> tuple[tuple[str, ...], list[str]]:
    """The first podman setting under which a container starts here, and what the others said.

    The probe runs `true` from the image: it fails only when the container cannot start (exit
    125-127 with an OCI error), never because of the bridge, which the tests then run."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    # podman as root raises the container's open files and processes past this host's hard
    # limits unless told: a sandbox that forbids that refuses to start the container.
    limits = ("--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096")
    candidates: list[tuple[str, ...]] = [(), limits]
    if shutil.which("runc"):
        # crun 1.8 (bookworm) refuses a cgroup v2 hierarchy with controllers beside v1 ones.
        candidates += [("--runtime", "runc"), ("--runtime", "runc", *limits)]
    said = []
    for flags in candidates:
        ran = _podman("run", "--rm", "--network", "host", *flags, "--entrypoint", "true", ref)
        if ran.returncode == 0:
            return flags, said
        error = (ran.stderr.strip().splitlines() or [f"exit {ran.returncode}"])[-1]
        said.append(f"[{' '.join(flags) or 'defaults'}] {error}")
    pytest.skip("podman cannot start a container on this machine: " + "; ".join(said))


# Session-scoped, and first in each test's arguments: where there is no image it skips before
# the (session-scoped) Kafka starts for nothing.
@pytest.fixture(scope="session")
def image() -> Image:
    if not RECORD.exists():
        if UNAVAILABLE.exists():
            pytest.skip(f"no image: {UNAVAILABLE.read_text().strip()}")
        pytest.skip("no image built: `make image-test` builds it, then runs this")
    if shutil.which("podman") is None:
        pytest.skip("podman not found (make image installs it as root)")
    built = json.loads(RECORD.read_text())
    archive = Path(built["archive"])
    # The archive is what ships: the tests run the image loaded from it.
    loaded = _podman("load", "--quiet", "--input", str(archive), timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    inspected = _podman("image", "inspect", built["tag"])
    assert inspected.returncode == 0, inspected.stderr
    (info,) = json.loads(inspected.stdout)
    assert info["Id"] == built["image_id"], "the archive holds another image than the build made"
    machine, said = _machine_flags(info["Id"])
    print(f"\npodman here: {' '.join(machine) or 'defaults'}; refused: {said or 'nothing'}")
    return Image(info["Id"], read_version(REPO), info.get("Labels") or {}, machine)


def _run_once(
    image: Image, pod: ChartPod, args: Sequence[str], *, entrypoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    name = f"apizee-image-test-{uuid.uuid4().hex[:8]}"
    try:
        return subprocess.run(
            [*image.launcher(pod, name, entrypoint=entrypoint), *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=bridge_env(**pod.env),
            check=False,
        )
    finally:
        _podman("rm", "--force", "--ignore", "--time", "0", name)


# -- the tests ---------------------------------------------------------------------------------


def test_version_and_config(
    image: Image, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    values = chart_values(kafka_bootstrap, topic_prefix)
    pod = chart_pod("Deployment", values, tmp_path)
    ran = _run_once(image, pod, ["--version"])
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == f"apizee-bridge {image.version}"
    assert image.labels["org.opencontainers.image.version"] == image.version

    ran = _run_once(image, pod, ["config"])
    assert ran.returncode == 0, ran.stderr
    config = json.loads(ran.stdout)
    assert config["kafka"]["bootstrap_servers"] == kafka_bootstrap
    assert config["kafka"]["topic_prefix"] == topic_prefix
    # The token came from the Secret's file, and is not printed.
    assert config["auth"]["token_file"] == pod.env["BRIDGE_AUTH_TOKEN_FILE"]
    assert TOKEN not in ran.stdout


def test_the_container_is_as_locked_down_as_the_chart_says(image: Image, tmp_path: Path) -> None:
    probe = (
        "import os, pathlib\n"
        "status = dict(l.split(':\\t', 1) for l in open('/proc/self/status').read().splitlines())\n"
        "print(os.getuid(), os.getgid(), sorted(os.getgroups()))\n"
        "print(status['CapEff'].strip(), status['CapBnd'].strip(), status['NoNewPrivs'].strip())\n"
        "print(pathlib.Path(os.environ['BRIDGE_AUTH_TOKEN_FILE']).read_text())\n"
        "for path in ('/', '/opt/venv', '/tmp'):\n"
        "    try:\n"
        "        (pathlib.Path(path) / 'probe').write_text('x')\n"
        "        print(path, 'writable')\n"
        "    except OSError as exc:\n"
        "        print(path, 'refused', exc.errno)\n"
    )
    values = chart_values("127.0.0.1:9", "unused")
    deployment = chart_pod("Deployment", values, tmp_path / "deployment")
    ran = _run_once(image, deployment, ["-c", probe], entrypoint="python")
    assert ran.returncode == 0, ran.stderr
    ids, caps, token, *paths = ran.stdout.strip().splitlines()
    assert ids == "10001 10001 [10001]"
    assert caps == "0000000000000000 0000000000000000 1"
    assert token == TOKEN  # the Secret's file, readable through fsGroup
    # EROFS (30) on the image's files; the emptyDir's tmpfs is the one writable path.
    assert paths == ["/ refused 30", "/opt/venv refused 30", "/tmp writable"]
    # The helm test Pod has no /tmp volume: nothing at all is writable there.
    helm_test = chart_pod("Pod", values, tmp_path / "helm-test")
    ran = _run_once(image, helm_test, ["-c", probe], entrypoint="python")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip().splitlines()[3:] == [
        "/ refused 30",
        "/opt/venv refused 30",
        "/tmp refused 30",
    ]


async def test_run_publishes_a_webhook_passes_helm_test_and_drains_on_sigterm(
    image: Image, kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    values = chart_values(kafka_bootstrap, topic_prefix)
    deployment = chart_pod("Deployment", values, tmp_path / "deployment")
    name = f"apizee-image-test-{uuid.uuid4().hex[:8]}"
    launcher = image.launcher(deployment, name)
    log = tmp_path / "bridge.log"
    try:
        async with bridge_process(
            deployment.args, bridge_env(**deployment.env), log, launcher=launcher
        ) as run:
            (where,) = await run.wait_events("listening", 1, START_TIMEOUT)
            assert where["admin_port"] == values["ports"]["admin"]
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                client = BridgeClient(
                    where["webhook_url"], f"http://127.0.0.1:{where['admin_port']}", session
                )
                await client.wait_ready()
                body = webhook("consent.accepted", event_id=9_001)
                reply = await client.post(body, token=TOKEN)
                assert reply.status == 200, f"{reply}; {run.transcript()}"

            records = await consume_async(
                kafka_bootstrap, TopicNames(topic_prefix).events(), min_count=1, timeout=30
            )
            assert len(records) == 1, records
            assert_event_record(records[0], body, topic_prefix)

            # `helm test`: the chart's check Pod against the running deployment.
            helm_test = chart_pod("Pod", values, tmp_path / "helm-test")
            assert helm_test.args == ["check", "--timeout", "10"]
            check = await asyncio.to_thread(_run_once, image, helm_test, helm_test.args)
            assert check.returncode == 0, check.stdout + check.stderr
            assert re.search(r"^check: all \d+ checks passed$", check.stdout, re.MULTILINE)

            # Kubernetes stops a pod with SIGTERM to the container's PID 1: the bridge.
            stop = _podman("kill", "--signal", "TERM", name)
            assert stop.returncode == 0, stop.stderr
            code = await run.stopped(STOP_WITHIN)
        assert code == 0, run.transcript()
        assert run.events("stopped"), run.transcript()
    finally:
        _podman("rm", "--force", "--ignore", "--time", "0", name)


def test_helm_test_in_the_image_fails_when_kafka_is_unreachable(
    image: Image, topic_prefix: str, tmp_path: Path
) -> None:
    down = f"127.0.0.1:{free_port()}"
    values = chart_values(down, topic_prefix)
    values["helmTest"]["timeoutSeconds"] = 3
    helm_test = chart_pod("Pod", values, tmp_path)
    ran = _run_once(image, helm_test, helm_test.args)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert f"FAIL  broker {down}:" in ran.stdout
