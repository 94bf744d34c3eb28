"""Ingress benchmark: the bridge against a bare aiohttp handler, publishing to Apache Kafka
(one KRaft node, the bridge's default producer: acks=all, idempotence on).

Capacity (closed loop): wrk POSTs seed webhooks at concurrency 128 and the servers' CPU seconds
are read from /proc: requests/s and requests per CPU-second of (a) the bare handler on one
core, (b) the bridge with one worker on one core, (c) the bridge with two workers, nothing
pinned, and (b) again on tansu (idempotence off) as an extra baseline.
Latency (open loop): bench/loadgen.py sends at fixed rates, 25 % and 50 % of (b)'s capacity,
on a schedule, and measures each request from its due time (no coordinated omission); the
bare handler and the bridge are run alternately at the same rates.
Placement: servers on core 0; wrk, the load generator and Kafka on core 1.

A fast but failing bridge must not look good: every non-2xx answer is counted and fails the
run, and after each bridge config the run's topics are read back: the records, their distinct
event ids and the bridge's own count of "accepted" answers must be equal, and at least what
the load saw answered 2xx.
Installs wrk with apt-get when it is missing (as root); Kafka's jars come from `make kafka`.
(e) is (b) with BRIDGE_DELIVERY_GUARANTEE=exactly_once (its requests per CPU-second against
(b)'s, closed loop), and both guarantees are run open loop at the same offered rates, 25 % and
75 % of (e)'s closed-loop capacity: their CPU per request at the same load, and at 25 % a
read_committed reader times each event from its due time until it is visible.
Usage: python bench/ingress.py [--duration S] [--latency-seconds S] [--rates R1,R2]
       [--linger-ms 0,20] [--no-tansu] [--no-exactly-once | --exactly-once-only];
       A/B: --base DIR [--rounds N]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import loadgen  # bench/loadgen.py, beside this script
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from bridge.catalog import CATEGORIES, EVENTS, UNKNOWN_CATEGORY
from bridge.devtools.devbroker import KafkaCluster, TansuBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 128
WRK_THREADS = 2
WARMUP_SECONDS = 3
TICKETS = 1000
TOKEN = "bench-" + uuid.uuid4().hex
WEBHOOK_PATH = "/webhooks/apizee"
BARE = "bare aiohttp"
# Ids of one run start at run_index * RUN_ID_STRIDE, those of one wrk thread at
# thread * THREAD_ID_STRIDE within it: every request of the whole bench is a new event,
# so the bridge's dedupe window never answers "duplicate". Below 2**53 (Lua numbers).
RUN_ID_STRIDE = 10**12
THREAD_ID_STRIDE = 10**10
START_TIMEOUT = 30.0
IDLE_SECONDS = 3.0  # reading Kafka back: give up after this long without a record

# Goals from the issue.
GOAL_B_OVER_A = 0.6
GOAL_P99_MS = 30.0
GOAL_C_OVER_B_PER_CPU = 0.9
GOAL_E_OVER_B_PER_CPU = 0.7

# Offered rates of the open-loop runs, as fractions of (b)'s closed-loop requests/s.
LATENCY_FRACTIONS = (0.25, 0.5)
# Both guarantees at the same offered rates, as fractions of (e)'s closed-loop requests/s:
# the visibility latency at the first, the CPU per request at each.
EXACTLY_ONCE_FRACTIONS = (0.25, 0.75)
# Connections of those open-loop runs: enough for the offered rate times exactly_once's
# answer time (a commit interval), below the bridge's 512 per worker.
VISIBILITY_CONNECTIONS = 384
LOADGEN_RT_PRIORITY = 10

# Other processes taking more than this of the server's core make a latency row suspect.
NOISY_OTHERS_SHARE = 0.1

# A pinned server busier than this is saturated; less means others took part of its core.
BUSY_CORE_SHARE = 0.9

CORE_SERVER = "0"
CORE_LOAD = "1"
ALL_CORES = "0,1"


# -- the load: a wrk Lua script ------------------------------------------------------------


def seed_templates() -> list[str]:
    """One webhook body per seed event type, objectId and ticketId left as %d."""
    props = json.loads((ROOT / "tests/fixtures/seed_props_examples.json").read_text())
    templates = []
    for code, event_type in enumerate(EVENTS, start=1):
        body = {
            "event": "create",
            "time": 1749581447,
            "object": "conversationevent",
            "objectId": -1,
            "props": {
                "eventType": event_type,
                "eventCode": code,
                "conversationId": 548,
                "ticketId": -2,
                **props.get(event_type, {}),
            },
        }
        text = json.dumps(body, separators=(",", ":")).replace("%", "%%")
        templates.append(
            text.replace('"objectId":-1', '"objectId":%d', 1).replace(
                '"ticketId":-2', '"ticketId":%d', 1
            )
        )
    return templates


def lua_script(templates: list[str]) -> str:
    for text in templates:
        assert "]==]" not in text
        assert text.count("%d") == 2
    bodies = ",\n".join(f"  [==[{text}]==]" for text in templates)
    # done() prints one JSON line: parsing wrk's human summary breaks on unit changes.
    return f"""
local templates = {{
{bodies}
}}
local ntemplates = #templates
local counter = 0
local base = 0
thread_index = 0
-- Globals, so that done() can read each thread's through thread:get().
non2xx = 0
statuses = ""
local seen = {{}}
local threads = {{}}

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Webhook-Token"] = "{TOKEN}"

function setup(thread)
  thread:set("thread_index", #threads)
  table.insert(threads, thread)
end

function init(args)
  base = tonumber(args[1]) + thread_index * {THREAD_ID_STRIDE}
end

function request()
  counter = counter + 1
  local id = base + counter
  local body = string.format(templates[counter % ntemplates + 1], id, counter % {TICKETS} + 1)
  return wrk.format(nil, nil, nil, body)
end

-- wrk's own summary.errors.status counts only statuses above 399: count every non-2xx here.
function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if not seen[status] then
      seen[status] = true
      statuses = statuses .. " " .. status
    end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local bad, codes = 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("non2xx")
    codes = codes .. thread:get("statuses")
  end
  io.write(string.format(
    'BENCH_JSON {{"requests":%d,"duration_us":%d,"non2xx":%d,"statuses":"%s",' ..
    '"socket_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}}\\n',
    summary.requests, summary.duration, bad, codes, e.connect + e.read + e.write,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    non2xx: int
    statuses: str  # the distinct non-2xx statuses seen, e.g. "401 503"
    socket_errors: int
    timeouts: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_seconds: float  # of wrk itself

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def ok(self) -> int:
        return self.requests - self.non2xx


def ensure_wrk() -> str:
    """wrk's path; installs the Debian package when missing and running as root."""
    path = shutil.which("wrk")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk missing: apt-get install -y wrk", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)
        path = shutil.which("wrk")
    if not path:
        raise SystemExit(
            "bench/ingress.py needs wrk (HTTP load generator): sudo apt-get install wrk"
        )
    return path


def run_wrk(
    wrk: str, script: Path, url: str, seconds: int, id_base: int, cores: str | None
) -> WrkResult:
    argv = [
        wrk,
        f"-t{WRK_THREADS}",
        f"-c{CONNECTIONS}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
        "--",
        str(id_base),
    ]
    if cores is not None:
        argv = ["taskset", "-c", cores, *argv]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        non2xx=data["non2xx"],
        statuses=" ".join(sorted(set(data["statuses"].split()))),
        socket_errors=data["socket_errors"],
        timeouts=data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        cpu_seconds=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    )


@functools.cache
def realtime() -> list[str]:
    """`chrt -f N` when this process may use it (root or CAP_SYS_NICE), else nothing.

    The load generator runs SCHED_FIFO: it needs a few % of a core, but must wake up on time
    on a core it shares with Kafka (and, on a shared machine, with others' work); otherwise
    its own scheduling delays would be counted as the server's latency. The servers under
    test keep the normal policy.
    """
    argv = ["chrt", "-f", str(LOADGEN_RT_PRIORITY)]
    try:
        done = subprocess.run([*argv, "true"], capture_output=True, check=False)
    except OSError:
        return []
    return argv if done.returncode == 0 else []


def run_loadgen(spec: loadgen.Spec, path: Path, cores: str | None) -> loadgen.Result:
    """bench/loadgen.py in a process of its own, on `cores` (not the server's)."""
    path.write_text(json.dumps(asdict(spec)))
    argv = [*realtime(), sys.executable, str(ROOT / "bench/loadgen.py"), str(path)]
    if cores is not None:
        argv = ["taskset", "-c", cores, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"loadgen failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return loadgen.Result(**json.loads(line.removeprefix("BENCH_JSON ")))


# -- processes --------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may contain spaces and parentheses: fields start after the last ")".
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (the bridge's spawned workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    tree, frontier = [root], [root]
    while frontier:
        children = [pid for pid, ppid in parents.items() if ppid in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of `pids` (fields 14 and 15 of /proc/PID/stat)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICK


def cpu_pressure_seconds() -> float:
    """Seconds some runnable task waited for a CPU, machine-wide (PSI, Linux 4.20+; NaN
    without it): its growth over a run, per second, says how contended the machine was."""
    try:
        text = Path("/proc/pressure/cpu").read_text()
    except OSError:
        return math.nan
    match = re.search(r"^some .*total=(\d+)", text, re.M)
    return int(match.group(1)) / 1e6 if match else math.nan


def core_busy_seconds(core: str | None) -> float:
    """Time core `core` ran anything or was stolen by the hypervisor (/proc/stat: user, nice,
    system, steal); NaN for None (an unpinned server has no core of its own)."""
    if core is None:
        return math.nan
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            user, nice, system, _, _, _, _, steal = (int(x) for x in line.split()[1:9])
            return (user + nice + system + steal) / _TICK
    return math.nan


@dataclass(frozen=True, slots=True)
class Usage:
    """CPU seconds over one run (or, from `take`, since boot) and the wall time it spans."""

    wall: float
    server: float  # the server's process tree
    broker: float  # the broker's process
    core: float  # the server's core, busy with anything (NaN when the server is unpinned)
    pressure: float  # some task waited for a CPU, machine-wide (PSI)

    @classmethod
    def take(cls, server: list[int], broker: Broker | None, core: str | None) -> Usage:
        broker_pids = [broker.pid] if broker is not None and broker.pid is not None else []
        return cls(
            time.monotonic(),
            cpu_seconds(server),
            cpu_seconds(broker_pids),
            core_busy_seconds(core),
            cpu_pressure_seconds(),
        )

    def __sub__(self, before: Usage) -> Usage:
        return Usage(
            self.wall - before.wall,
            self.server - before.server,
            self.broker - before.broker,
            self.core - before.core,
            self.pressure - before.pressure,
        )

    @property
    def others(self) -> float:
        """Share of the server's core that went to anything else: the noise it suffered."""
        return max(0.0, self.core - self.server) / self.wall

    def share(self, seconds: float) -> float:
        return seconds / self.wall


@dataclass(frozen=True, slots=True)
class Broker:
    """What a bridge config publishes to: its address, its process (for CPU accounting and
    pinning), and the producer settings this broker needs."""

    name: str
    bootstrap_servers: str
    pid: int | None
    env: Mapping[str, str]


# Apache Kafka takes the bridge's defaults (acks=all, idempotence on, replication factor -1,
# which is 1 on one node); tansu has no idempotent producer.
KAFKA_ENV: dict[str, str] = {}
TANSU_ENV = {
    "BRIDGE_KAFKA_ENABLE_IDEMPOTENCE": "false",
    "BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR": "1",
}


def pin_all_threads(broker: Broker, cores: str | None) -> None:
    # -a: the JVM (and tansu) are multi-threaded and their threads exist already; threads
    # started later inherit the affinity of the thread that starts them.
    if cores is not None and broker.pid is not None:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cores, str(broker.pid)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def kafka_broker(logs: Path, cores: str | None) -> Iterator[Broker]:
    """One Apache Kafka node (KRaft, broker and controller in one JVM), pinned to `cores`."""
    with KafkaCluster(nodes=1, workdir=logs / "kafka") as cluster:
        node = cluster.nodes[0]
        broker = Broker("Kafka", cluster.bootstrap_servers, node.pid, KAFKA_ENV)
        pin_all_threads(broker, cores)
        yield broker


@contextlib.contextmanager
def tansu_broker(logs: Path, cores: str | None) -> Iterator[Broker]:
    with TansuBroker(log_path=logs / "tansu.log") as tansu:
        broker = Broker("tansu", tansu.bootstrap_servers, tansu.pid, TANSU_ENV)
        pin_all_threads(broker, cores)
        yield broker


def wait_until(check: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready within {timeout}s")


def http_ok(url: str, data: bytes | None = None) -> bool:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def server_process(
    argv: list[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> Iterator[int]:
    """Start `argv`, yield its pid, SIGTERM it (and so its workers) on exit."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv, env=dict(env), stdout=out, stderr=subprocess.STDOUT, cwd=cwd
        )
    try:
        yield process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bridge_env(
    broker: Broker,
    prefix: str,
    port: int,
    admin_port: int,
    workers: int,
    linger_ms: str | None,
    guarantee: str | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(broker.env)
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers,
        BRIDGE_KAFKA_TOPIC_PREFIX=prefix,
        BRIDGE_INGRESS_HOST="127.0.0.1",
        BRIDGE_INGRESS_PORT=str(port),
        BRIDGE_INGRESS_WORKERS=str(workers),
        BRIDGE_INGRESS_ACCESS_LOG="false",
        BRIDGE_INGRESS_SHUTDOWN_GRACE_SECONDS="5",
        BRIDGE_ADMIN_HOST="127.0.0.1",
        BRIDGE_ADMIN_PORT=str(admin_port),
        BRIDGE_AUTH_TOKEN=TOKEN,
        BRIDGE_LOG_LEVEL="WARNING",
    )
    # Only the linger sweep sets it: otherwise the bridge's default is measured.
    if linger_ms is not None:
        env["BRIDGE_KAFKA_LINGER_MS"] = linger_ms
    if guarantee is not None:
        env["BRIDGE_DELIVERY_GUARANTEE"] = guarantee
    return env


@dataclass(frozen=True, slots=True)
class KafkaContent:
    records: int  # on the category topics
    distinct_ids: int  # distinct event-id headers among them
    rejected: int  # on the unknown and DLQ topics


def read_topics(
    bootstrap: str, topics: list[str], rejected_topics: list[str], expected: int
) -> KafkaContent:
    """Read every record of the run's topics back and count them and their event ids.

    Not from the watermarks: tansu reports a high watermark below the last offset + 1 when
    the last batch of a partition holds several records (off by 1-4 per partition here), so
    high - low undercounts. Stops once `expected` records came and the topics stay quiet,
    or after IDLE_SECONDS without any record.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        consumer.assign(
            [
                TopicPartition(topic, partition, OFFSET_BEGINNING)
                for topic in (*topics, *rejected_topics)
                if topic in metadata.topics
                for partition in metadata.topics[topic].partitions
            ]
        )
        records = rejected = 0
        ids: set[str | bytes] = set()
        last = time.monotonic()
        while time.monotonic() - last < IDLE_SECONDS:
            batch = consumer.consume(10_000, timeout=0.5)
            if not batch and records + rejected >= expected:
                break
            for message in batch:
                if message.error():
                    raise RuntimeError(f"reading back {message.topic()}: {message.error()}")
                last = time.monotonic()
                if message.topic() in rejected_topics:
                    rejected += 1
                    continue
                records += 1
                headers = message.headers() or []
                pairs = headers.items() if isinstance(headers, dict) else headers
                ids.update(v for k, v in pairs if k == "event-id" and v is not None)
        return KafkaContent(records, len(ids), rejected)
    finally:
        consumer.close()


_ANSWERS = re.compile(
    r'^apizee_bridge_webhook_requests_total\{reason="([^"]*)",status="(\d+)"\} (\S+)$', re.M
)
_IN_FLIGHT = re.compile(r"^apizee_bridge_webhooks_in_flight(?:\{[^}]*\})? (\S+)$", re.M)


def bridge_answers(admin_url: str, timeout: float = 15.0) -> Counter[tuple[int, str]]:
    """The bridge's own count of webhook answers by (status, reason), all workers merged,
    read once the requests wrk left in flight have been answered."""
    deadline = time.monotonic() + timeout
    # Twice in a row 0.2 s apart: the gauge of a worker that does not answer the scrape is
    # sampled every 0.1 s.
    idle = 0
    while True:
        with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
            text = response.read().decode()
        in_flight = sum(float(x) for x in _IN_FLIGHT.findall(text))
        idle = idle + 1 if in_flight == 0 else 0
        if idle == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    answers: Counter[tuple[int, str]] = Counter()
    for reason, status, value in _ANSWERS.findall(text):
        answers[int(status), reason] += round(float(value))
    return answers


# -- one configuration ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    wrk: WrkResult
    usage: Usage  # over the measured run
    kafka: KafkaContent | None = None  # what the run's topics hold, warm-up included
    sent_ok: int | None = None  # 2xx answers wrk counted, warm-up included
    # The bridge's /metrics count of answers by (status, reason), warm-up included.
    answers: Counter[tuple[int, str]] | None = None

    @property
    def per_cpu(self) -> float:
        server = self.usage.server
        return self.wrk.requests / server if server else float("nan")


@dataclass(frozen=True, slots=True)
class LatencyRow:
    name: str
    load: loadgen.Result
    usage: Usage  # over the generator's whole run, warm-up included

    @property
    def cpu_us_per_request(self) -> float:
        """The server's CPU per answered request (warm-up included)."""
        answered = self.load.ok_total + self.load.non2xx
        return 1e6 * self.usage.server / answered if answered else math.nan


@dataclass(frozen=True, slots=True)
class BridgeProcess:
    pid: int
    url: str
    admin: str
    prefix: str


@dataclass
class Bench:
    wrk: str
    script: Path
    logs: Path
    seconds: int
    pin: bool
    runs: int = 0

    @property
    def server_cores(self) -> str | None:
        return CORE_SERVER if self.pin else None

    @property
    def load_cores(self) -> str | None:
        return CORE_LOAD if self.pin else None

    def load(self, url: str, seconds: int, cores: str | None) -> WrkResult:
        self.runs += 1
        return run_wrk(self.wrk, self.script, url, seconds, self.runs * RUN_ID_STRIDE, cores)

    def measure(
        self,
        name: str,
        url: str,
        root: int,
        broker: Broker | None,
        server_cores: str | None,
        load_cores: str | None,
    ) -> tuple[WrkResult, Row]:
        """Warm-up, then the measured run with the server tree's CPU time around it."""
        warmup = self.load(url, WARMUP_SECONDS, load_cores)
        pids = process_tree(root)
        before = Usage.take(pids, broker, server_cores)
        result = self.load(url, self.seconds, load_cores)
        return warmup, Row(name, result, Usage.take(pids, broker, server_cores) - before)

    @contextlib.contextmanager
    def bare_process(self) -> Iterator[tuple[int, str]]:
        port = free_port()
        argv = [sys.executable, str(ROOT / "bench/bare_server.py"), str(port)]
        if self.pin:
            argv = ["taskset", "-c", CORE_SERVER, *argv]
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        with server_process(argv, os.environ, self.logs / f"bare-{port}.log") as pid:
            wait_until(lambda: http_ok(url, b"{}"), "bare server")
            yield pid, url

    @contextlib.contextmanager
    def bridge_process(
        self,
        broker: Broker,
        workers: int,
        cores: str | None,
        linger_ms: str | None = None,
        src: Path | None = None,
        guarantee: str | None = None,
    ) -> Iterator[BridgeProcess]:
        """`src`: a directory holding another `bridge` package to run (python -m from there
        imports it before the installed one), e.g. a `git archive` of the base commit."""
        port, admin_port = free_port(), free_port()
        prefix = f"bench.{uuid.uuid4().hex[:8]}"
        env = bridge_env(broker, prefix, port, admin_port, workers, linger_ms, guarantee)
        argv = [sys.executable, "-m", "bridge.cli", "run"]
        if cores is not None:
            argv = ["taskset", "-c", cores, *argv]
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        admin = f"http://127.0.0.1:{admin_port}"
        with server_process(argv, env, self.logs / f"bridge-{prefix}.log", cwd=src) as pid:
            # Each worker has its own producer; consecutive answers reach several of them.
            wait_until(
                lambda: all(http_ok(f"{admin}/readyz") for _ in range(10 * workers)), "bridge"
            )
            yield BridgeProcess(pid, url, admin, prefix)

    def bare(self) -> Row:
        with self.bare_process() as (pid, url):
            _, row = self.measure(f"(a) {BARE}", url, pid, None, self.server_cores, self.load_cores)
        return row

    def bridge(
        self,
        name: str,
        broker: Broker,
        workers: int,
        pinned: bool,
        linger_ms: str | None = None,
        src: Path | None = None,
        guarantee: str | None = None,
    ) -> Row:
        load_cores = CORE_LOAD if pinned else None
        pin_all_threads(broker, load_cores or (ALL_CORES if self.pin else None))
        server_cores = CORE_SERVER if pinned else None
        with self.bridge_process(
            broker, workers, server_cores, linger_ms, src, guarantee
        ) as bridge:
            warmup, row = self.measure(
                name, bridge.url, bridge.pid, broker, server_cores, load_cores
            )
            answers = bridge_answers(bridge.admin)
        # The bridge flushed its producer on SIGTERM: every acknowledged record is in Kafka.
        return replace(
            row,
            kafka=read_back(broker, bridge.prefix, answers),
            sent_ok=warmup.ok + row.wrk.ok,
            answers=answers,
        )

    def open_loop(
        self,
        name: str,
        url: str,
        root: int,
        broker: Broker | None,
        rate: float,
        seconds: int,
        connections: int = CONNECTIONS,
    ) -> LatencyRow:
        self.runs += 1
        spec = loadgen.Spec(
            host="127.0.0.1",
            port=urlsplit(url).port or 80,
            path=WEBHOOK_PATH,
            headers={"Content-Type": "application/json", "X-Webhook-Token": TOKEN},
            bodies=seed_templates(),
            id_base=self.runs * RUN_ID_STRIDE,
            rate=rate,
            warmup=WARMUP_SECONDS,
            seconds=seconds,
            connections=connections,
        )
        pids = process_tree(root)
        before = Usage.take(pids, broker, self.server_cores)
        result = run_loadgen(spec, self.logs / f"loadgen-{self.runs}.json", self.load_cores)
        return LatencyRow(name, result, Usage.take(pids, broker, self.server_cores) - before)

    def same_rate(self, broker: Broker, e: Row, seconds: int) -> list[SameRate]:
        """Both guarantees at each of EXACTLY_ONCE_FRACTIONS of (e)'s closed-loop rate."""
        points = []
        for fraction in EXACTLY_ONCE_FRACTIONS:
            rate = round(fraction * e.wrk.rate)
            points.append(SameRate(rate, fraction, self.visibility(broker, rate, seconds)))
        return points

    def visibility(
        self, broker: Broker, rate: float, seconds: int
    ) -> list[tuple[str, LatencyRow, list[float]]]:
        """Each guarantee at `rate`: the webhook latency and the time from each request's
        due time until a read_committed reader sees its event."""
        pin_all_threads(broker, self.load_cores)
        out = []
        for guarantee in ("at_least_once", "exactly_once"):
            with (
                self.bridge_process(broker, 1, self.server_cores, guarantee=guarantee) as bridge,
                Visibility(broker.bootstrap_servers, bridge.prefix) as reader,
            ):
                row = self.open_loop(
                    guarantee,
                    bridge.url,
                    bridge.pid,
                    broker,
                    rate,
                    seconds,
                    connections=VISIBILITY_CONNECTIONS,
                )
                id_base = self.runs * RUN_ID_STRIDE
                wait_until(
                    lambda: len(reader.seen) >= row.load.ok_total,  # noqa: B023
                    "every answered event visible",
                    timeout=15,
                )
                out.append((guarantee, row, reader.latencies_ms(row.load, id_base)))
        return out

    def latency(
        self, broker: Broker, rates: list[float], seconds: int, lingers: list[str]
    ) -> tuple[list[LatencyRow], list[KafkaCheck]]:
        """The bare handler and the bridge (one worker with the default producer, then one
        per `lingers` value; all on the server core), each at each rate, one after the
        other: all see the same noise of the machine."""
        pin_all_threads(broker, self.load_cores)
        rows: list[LatencyRow] = []
        configs: list[tuple[str, str | None]] = [(f"bridge, {broker.name}", None)]
        configs += [(f"bridge, linger_ms={linger}", linger) for linger in lingers]
        with contextlib.ExitStack() as stack:
            bare_pid, bare_url = stack.enter_context(self.bare_process())
            bridges = [
                (
                    name,
                    stack.enter_context(self.bridge_process(broker, 1, self.server_cores, linger)),
                )
                for name, linger in configs
            ]
            for rate in rates:
                rows.append(self.open_loop(BARE, bare_url, bare_pid, None, rate, seconds))
                rows += [
                    self.open_loop(name, bridge.url, bridge.pid, broker, rate, seconds)
                    for name, bridge in bridges
                ]
            answers = {name: bridge_answers(bridge.admin) for name, bridge in bridges}
        # The bridges flushed their producers on SIGTERM: every acknowledged record is in Kafka.
        return rows, [
            KafkaCheck(
                f"open-loop {name}",
                read_back(broker, bridge.prefix, answers[name]),
                answers[name],
                sent_ok=sum(r.load.ok_total for r in rows if r.name == name),
                # The generator waits for every answer: nothing is in flight when it stops.
                in_flight=0,
            )
            for name, bridge in bridges
        ]


class Visibility:
    """A read_committed reader of a bridge's category topics, from their end, that notes when
    each event id becomes visible (CLOCK_MONOTONIC, as the load generator's due times)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(bootstrap, prefix), daemon=True)

    def __enter__(self) -> Visibility:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("the visibility reader did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _read(self, bootstrap: str, prefix: str) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"bench-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": 5,
            }
        )
        try:
            topics = [f"{prefix}.{c}" for c in CATEGORIES]
            metadata = consumer.list_topics(timeout=10)
            # From the end offsets of now (explicit, not OFFSET_END, which librdkafka
            # resolves only at its first fetch): none of the load's records skipped.
            consumer.assign(
                [
                    TopicPartition(topic, partition, _end_offset(consumer, topic, partition))
                    for topic in topics
                    for partition in metadata.topics[topic].partitions
                ]
            )
            self._ready.set()
            while not self._stop.is_set():
                for message in consumer.consume(10_000, timeout=0.05):
                    now = time.monotonic_ns()
                    if message.error():
                        continue
                    for key, value in message.headers() or []:
                        if key == "event-id" and value is not None:
                            self.seen.setdefault(int(value), now)
        finally:
            consumer.close()

    def latencies_ms(self, result: loadgen.Result, id_base: int) -> list[float]:
        """Due time to visibility of every measured request (a missing one: infinite)."""
        out = []
        for i in range(result.first_measured, result.first_measured + result.sent):
            due = result.t0_ns + round(i * 1_000_000_000 / result.rate)
            at = self.seen.get(id_base + i)
            out.append(math.inf if at is None else (at - due) / 1e6)
        return sorted(out)


def _end_offset(consumer: Consumer, topic: str, partition: int) -> int:
    """The high watermark, asked again while the topic is new (NOT_LEADER and the like)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            high: int = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=10, cached=False
            )[1]
            return high
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_back(broker: Broker, prefix: str, answers: Counter[tuple[int, str]]) -> KafkaContent:
    return read_topics(
        broker.bootstrap_servers,
        [f"{prefix}.{c}" for c in CATEGORIES],
        [f"{prefix}.{UNKNOWN_CATEGORY}", f"{prefix}.dlq"],
        expected=sum(answers.values()),
    )


# -- report -------------------------------------------------------------------------------


def percent(share: float) -> str:
    return "-" if math.isnan(share) else f"{100 * share:.0f}"


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'config':<36} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non2xx':>6} {'sockerr':>7}"
        f" {'srv CPU s':>9} {'CPU %':>6} {'req/CPU-s':>9} {'wrk CPU s':>9} {'broker CPU s':>12}"
        f" {'others %':>8} {'PSI %':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        w, u = row.wrk, row.usage
        print(
            f"{row.name:<36} {w.rate:>8,.0f} {w.p50_ms:>7.2f} {w.p99_ms:>7.2f} {w.non2xx:>6}"
            f" {w.socket_errors + w.timeouts:>7} {u.server:>9.2f} {percent(u.share(u.server)):>6}"
            f" {row.per_cpu:>9,.0f} {w.cpu_seconds:>9.2f} {u.broker:>12.2f}"
            f" {percent(u.others):>8} {percent(u.share(u.pressure)):>5}"
        )


def print_latency_table(rows: list[LatencyRow]) -> None:
    header = (
        f"{'config':<20} {'offered/s':>9} {'achieved/s':>10} {'p50 ms':>7} {'p90 ms':>7}"
        f" {'p99 ms':>7} {'p99.9 ms':>8} {'max ms':>7} {'errors':>6} {'late>1ms':>8}"
        f" {'queued':>6} {'lag p99 ms':>10} {'srv CPU %':>9} {'us CPU/req':>10}"
        f" {'broker CPU %':>12} {'gen CPU %':>9} {'others %':>8} {'PSI %':>5}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        r, u = row.load, row.usage
        errors = r.non2xx + r.socket_errors + r.unanswered
        print(
            f"{row.name:<20} {r.rate:>9,.0f} {r.achieved:>10,.0f} {r.p50_ms:>7.2f}"
            f" {r.p90_ms:>7.2f} {r.p99_ms:>7.2f} {r.p999_ms:>8.2f} {r.max_ms:>7.1f}"
            f" {errors:>6} {r.late:>8} {r.queued:>6} {r.lag_p99_ms:>10.2f}"
            f" {percent(u.share(u.server)):>9} {row.cpu_us_per_request:>10.0f}"
            f" {percent(u.share(u.broker)):>12} {percent(u.share(r.cpu_seconds)):>9}"
            f" {percent(u.others):>8} {percent(u.share(u.pressure)):>5}"
        )


def print_visibility(rows: list[tuple[str, LatencyRow, list[float]]], rate: float) -> None:
    header = (
        f"{'guarantee':<14} {'offered/s':>9} {'answer p50 ms':>13} {'answer p99 ms':>13}"
        f" {'visible p50 ms':>14} {'visible p99 ms':>14} {'not visible':>11}"
    )
    print(header)
    print("-" * len(header))
    for name, row, visible in rows:
        seen = [v for v in visible if v != math.inf]
        print(
            f"{name:<14} {rate:>9,.0f} {row.load.p50_ms:>13.1f} {row.load.p99_ms:>13.1f}"
            f" {_pct(seen, 50):>14.1f} {_pct(seen, 99):>14.1f} {len(visible) - len(seen):>11}"
        )


def _pct(ordered: list[float], p: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


def print_latency_ratios(rows: list[LatencyRow], capacity: float) -> None:
    bare = {row.load.rate: row.load for row in rows if row.name == BARE}
    for row in rows:
        base = bare.get(row.load.rate)
        if base is None or row.name == BARE:
            continue
        r = row.load
        print(
            f"{row.name} / bare at {r.rate:,.0f}/s ({r.rate / capacity:.0%} of (b)):"
            f" p50 x{r.p50_ms / base.p50_ms:.1f}, p99 x{r.p99_ms / base.p99_ms:.1f},"
            f" p99.9 x{r.p999_ms / base.p999_ms:.1f}"
            f" ({r.p50_ms - base.p50_ms:+.2f} / {r.p99_ms - base.p99_ms:+.2f}"
            f" / {r.p999_ms - base.p999_ms:+.2f} ms)"
        )
    for row in rows:
        r = row.load
        if r.late > r.sent // 100:
            print(
                f"NOISE? {row.name} at {r.rate:,.0f}/s: the generator itself sent {r.late:,} of"
                f" {r.sent:,} requests more than 1 ms late (its core was busy): those"
                f" latencies include that lag, an upper bound for the server's"
            )
        if row.usage.others > NOISY_OTHERS_SHARE:
            print(
                f"NOISE? {row.name} at {r.rate:,.0f}/s: other processes took"
                f" {percent(row.usage.others)} % of the server's core: its latencies include"
                " waiting for them"
            )


@dataclass(frozen=True, slots=True)
class KafkaCheck:
    """What one bridge process answered and what its topics hold afterwards."""

    name: str
    kafka: KafkaContent
    answers: Counter[tuple[int, str]]  # the bridge's /metrics, by (status, reason)
    sent_ok: int  # 2xx answers the load counted, warm-up included
    in_flight: int  # at most this many requests may be answered after the load stopped

    @classmethod
    def of(cls, row: Row) -> KafkaCheck:
        assert row.kafka is not None
        assert row.sent_ok is not None
        assert row.answers is not None
        # wrk stops with requests in flight (warm-up and measured run): the bridge answers
        # and publishes them, wrk does not count them; at most one per connection per run.
        return cls(row.name, row.kafka, row.answers, row.sent_ok, 2 * CONNECTIONS)

    def passed(self) -> bool:
        """Every acknowledged event is in Kafka: what the topics hold is exactly what the
        bridge answered "accepted" to, and at least what the load saw answered 2xx."""
        accepted = self.answers[200, "accepted"]
        other = {f"{status} {reason}": n for (status, reason), n in self.answers.items() if n}
        other.pop("200 accepted", None)
        extra = accepted - self.sent_ok
        kafka = self.kafka
        good = (
            kafka.records == kafka.distinct_ids == accepted
            and 0 <= extra <= self.in_flight
            and kafka.rejected == 0
            and not other
        )
        print(
            f"kafka check {self.name}: {kafka.records:,} records read back from the category"
            f" topics, {kafka.distinct_ids:,} distinct event ids, bridge answered {accepted:,}"
            f" accepted (all three must be equal); the load counted {self.sent_ok:,} 2xx"
            f" (+{extra} in flight when it stopped, allowed 0..{self.in_flight});"
            f" {kafka.rejected} on unknown/dlq, other answers: {other or 'none'}:"
            f" {'OK' if good else 'FAIL'}"
        )
        return good


def machine() -> str:
    """One line for the record: when and on what the bench ran, and how busy it was."""
    cpus = os.cpu_count()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {cpus} CPUs ({model}), Linux"
        f" {os.uname().release}, Python {sys.version.split()[0]}; load average {load}"
    )


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=12, help="measured seconds per config")
    parser.add_argument(
        "--latency-seconds",
        type=int,
        default=20,
        help="measured seconds per open-loop run (0: no latency runs)",
    )
    parser.add_argument(
        "--rates",
        default="",
        help="comma-separated open-loop rates (req/s) instead of 25 and 50 %% of (b)'s",
    )
    parser.add_argument("--no-tansu", action="store_true", help="skip the tansu baseline row")
    parser.add_argument(
        "--linger-ms",
        default="",
        help="comma-separated BRIDGE_KAFKA_LINGER_MS values to run (b) and the open-loop"
        " bridge with too, e.g. 0,20",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="A/B mode: a directory with the base `bridge` package (e.g. `git archive HEAD"
        " bridge | tar -x -C DIR`); runs (b) alternately from there and from this tree",
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B mode: pairs of (b) runs")
    parser.add_argument("--no-exactly-once", action="store_true", help="skip the exactly_once rows")
    parser.add_argument(
        "--exactly-once-only",
        action="store_true",
        help="only (b), (e) (exactly_once) and the read_committed visibility latency",
    )
    args = parser.parse_args()
    if args.base is not None:
        return compare(args.base, args.rounds, args.duration)
    if args.exactly_once_only:
        return exactly_once_only(args.duration, args.latency_seconds)
    wrk = ensure_wrk()
    pin = len(os.sched_getaffinity(0)) >= 2
    if not pin:
        print("fewer than 2 usable cores: nothing is pinned", file=sys.stderr)
    started = machine()

    tansu: Row | None = None
    latency: list[LatencyRow] = []
    checks: list[KafkaCheck] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        logs = Path(tmp)
        script = logs / "seed.lua"
        script.write_text(lua_script(seed_templates()))
        bench = Bench(wrk, script, logs, args.duration, pin)
        with kafka_broker(logs, bench.load_cores) as kafka:
            a = bench.bare()
            b = bench.bridge("(b) bridge 1 worker, pinned", kafka, 1, pinned=pin)
            c = bench.bridge("(c) bridge 2 workers, unpinned", kafka, 2, pinned=False)
            lingers = [x.strip() for x in args.linger_ms.split(",") if x.strip()]
            sweep = [
                bench.bridge(f"(b) linger_ms={linger}", kafka, 1, pinned=pin, linger_ms=linger)
                for linger in lingers
            ]
            e = None if args.no_exactly_once else exactly_once_row(bench, kafka, pin)
            capacity = b.wrk.rate
            rates = [float(x) for x in args.rates.split(",") if x.strip()] or [
                round(fraction * capacity) for fraction in LATENCY_FRACTIONS
            ]
            if args.latency_seconds > 0:
                latency, checks = bench.latency(kafka, rates, args.latency_seconds, lingers)
            same_rate: list[SameRate] = []
            if e is not None and args.latency_seconds > 0:
                same_rate = bench.same_rate(kafka, e, args.latency_seconds)
        if not args.no_tansu:
            with tansu_broker(logs, bench.load_cores) as broker:
                tansu = bench.bridge("(b) bridge 1 worker, pinned, tansu", broker, 1, pinned=pin)

    placement = "server on core 0; wrk, load generator and Kafka on core 1" if pin else "unpinned"
    rows = [a, b, c, *sweep, *([e] if e else []), *([tansu] if tansu else [])]
    print(f"machine at start: {started}")
    print(
        f"ingress capacity (closed loop): wrk -t{WRK_THREADS} -c{CONNECTIONS},"
        f" {WARMUP_SECONDS}s warm-up + {args.duration}s measured, {len(EVENTS)} seed event"
        f" types round-robin, broker: Apache Kafka 4.4, 1 node (acks=all, idempotence on)"
        f" unless named; {placement} for (a), (b)"
    )
    print_table(rows)
    print()
    b_over_a = b.wrk.rate / a.wrk.rate
    c_over_b = c.per_cpu / b.per_cpu
    print(
        f"b/a requests/s:           {b_over_a:.2f}  (goal >= {GOAL_B_OVER_A}: "
        f"{verdict(b_over_a >= GOAL_B_OVER_A)})"
    )
    print(
        f"p99 of (b):               {b.wrk.p99_ms:.1f} ms at concurrency {CONNECTIONS}"
        f"  (goal < {GOAL_P99_MS:.0f} ms: {verdict(b.wrk.p99_ms < GOAL_P99_MS)})"
    )
    print(
        f"c/b requests per CPU-s:   {c_over_b:.2f}  (goal >= {GOAL_C_OVER_B_PER_CPU}: "
        f"{verdict(c_over_b >= GOAL_C_OVER_B_PER_CPU)})"
    )
    print(f"c/b requests/s:           {c.wrk.rate / b.wrk.rate:.2f}")
    print(f"b/a requests per CPU-s:   {b.per_cpu / a.per_cpu:.2f}  (less sensitive to other load)")
    if tansu is not None:
        print(f"b on Kafka / b on tansu requests per CPU-s: {b.per_cpu / tansu.per_cpu:.2f}")
    if e is not None:
        report_exactly_once(b, e, same_rate)
    if pin:
        for row in (a, b):
            share = row.usage.share(row.usage.server)
            if share < BUSY_CORE_SHARE:
                print(
                    f"NOISE? {row.name} used only {share:.0%} of its pinned core, other"
                    f" processes {percent(row.usage.others)} % (or the wrk + broker core was"
                    " the limit), so its requests/s and b/a understate it; requests per"
                    " CPU-s hold better"
                )
    if latency:
        print()
        print(
            f"ingress latency (open loop): bench/loadgen.py, request i due at t0 + i/rate on"
            f" {CONNECTIONS} keep-alive connections, latency from the due time (no coordinated"
            f" omission), {WARMUP_SECONDS}s warm-up + {args.latency_seconds}s measured per"
            f" row, generator {'SCHED_FIFO' if realtime() else 'SCHED_OTHER (chrt refused)'};"
            f" rates {' and '.join(f'{r:,.0f}/s' for r in rates)}"
            f" ({' and '.join(f'{r / capacity:.0%}' for r in rates)} of (b)'s {capacity:,.0f}"
            f" req/s); {placement}"
        )
        print_latency_table(latency)
        print()
        print_latency_ratios(latency, capacity)
    checked = (b, c, *sweep, *([e] if e else []), *([tansu] if tansu else []))
    checks = [KafkaCheck.of(row) for row in checked] + checks
    results = [check.passed() for check in checks]
    errors = 0
    for row in rows:
        w = row.wrk
        failed = w.non2xx + w.socket_errors + w.timeouts
        errors += failed
        if failed:
            print(
                f"{row.name}: {w.non2xx} non-2xx answers (statuses: {w.statuses or '-'}),"
                f" {w.socket_errors} socket errors, {w.timeouts} timeouts"
            )
    for lrow in latency:
        r = lrow.load
        failed = r.non2xx + r.socket_errors + r.unanswered
        errors += failed
        if failed:
            print(
                f"{lrow.name} at {r.rate:,.0f}/s: {r.non2xx} non-2xx answers (statuses:"
                f" {r.statuses or '-'}), {r.socket_errors} socket errors,"
                f" {r.unanswered} unanswered"
            )
    for point in same_rate:
        failed = point.failed()
        errors += failed
        if failed:
            print(f"open loop at {point.rate:,.0f}/s, both guarantees: {failed} failed requests")
    print(f"failed requests (non-2xx, socket errors, timeouts), all configs: {errors}")
    return 0 if all(results) and not errors else 1


def exactly_once_row(bench: Bench, kafka: Broker, pin: bool) -> Row:
    return bench.bridge(
        "(e) bridge 1 worker, pinned, exactly_once",
        kafka,
        1,
        pinned=pin,
        guarantee="exactly_once",
    )


def report_exactly_once(b: Row, e: Row, same_rate: list[SameRate]) -> None:
    closed = e.per_cpu / b.per_cpu
    busy_b, busy_e = (row.usage.share(row.usage.server) for row in (b, e))
    print(
        f"e/b requests per CPU-s, closed loop: {closed:.2f}  (wrk at concurrency {CONNECTIONS}:"
        f" each exactly_once answer waits for its transaction's commit, so (e) kept its core"
        f" {busy_e:.0%} busy against (b)'s {busy_b:.0%}; a core that idles between requests"
        " spends more on each)"
    )
    print(f"e/b requests/s, closed loop:         {e.wrk.rate / b.wrk.rate:.2f}")
    if not same_rate:
        return
    for point in same_rate:
        ratio = point.ratio
        print(
            f"e/b requests per CPU-s at {point.rate:,.0f}/s offered to both"
            f" ({point.fraction:.0%} of (e)'s closed-loop rate): {ratio:.2f}"
            f"  ({point.b.cpu_us_per_request:.0f} against {point.e.cpu_us_per_request:.0f} us"
            f" of CPU per request; goal >= {GOAL_E_OVER_B_PER_CPU}:"
            f" {verdict(ratio >= GOAL_E_OVER_B_PER_CPU)})"
        )
    first = same_rate[0]
    print()
    print(
        f"send to read_committed visibility (open loop at {first.rate:,.0f}/s ="
        f" {first.fraction:.0%} of (e)'s closed-loop capacity, {VISIBILITY_CONNECTIONS}"
        " connections; from each request's due time until a read_committed confluent-kafka"
        " reader, fetch.wait.max.ms=5, got its record)"
    )
    print_visibility(first.rows, first.rate)


@dataclass(frozen=True, slots=True)
class SameRate:
    """Both guarantees, one after the other, open loop at one offered rate."""

    rate: float
    fraction: float  # of (e)'s closed-loop requests/s
    rows: list[tuple[str, LatencyRow, list[float]]]

    @property
    def b(self) -> LatencyRow:
        return self.rows[0][1]

    @property
    def e(self) -> LatencyRow:
        return self.rows[1][1]

    @property
    def ratio(self) -> float:
        """exactly_once's requests per CPU-second over at_least_once's, at the same load."""
        return self.b.cpu_us_per_request / self.e.cpu_us_per_request

    def failed(self) -> int:
        return sum(
            r.load.non2xx + r.load.socket_errors + r.load.unanswered for _, r, _ in self.rows
        )


def exactly_once_only(seconds: int, latency_seconds: int) -> int:
    """(b) and (e) in the same run, then both guarantees at the same offered rates."""
    wrk = ensure_wrk()
    pin = len(os.sched_getaffinity(0)) >= 2
    started = machine()
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        logs = Path(tmp)
        script = logs / "seed.lua"
        script.write_text(lua_script(seed_templates()))
        bench = Bench(wrk, script, logs, seconds, pin)
        with kafka_broker(logs, bench.load_cores) as kafka:
            b = bench.bridge("(b) bridge 1 worker, pinned", kafka, 1, pinned=pin)
            e = exactly_once_row(bench, kafka, pin)
            same_rate = bench.same_rate(kafka, e, latency_seconds) if latency_seconds else []
    print(f"machine at start: {started}")
    print_table([b, e])
    print()
    report_exactly_once(b, e, same_rate)
    results = [KafkaCheck.of(row).passed() for row in (b, e)]
    errors = sum(r.wrk.non2xx + r.wrk.socket_errors + r.wrk.timeouts for r in (b, e))
    errors += sum(point.failed() for point in same_rate)
    print(f"failed requests (non-2xx, socket errors, timeouts), all configs: {errors}")
    return 0 if all(results) and not errors else 1


def compare(base: Path, rounds: int, seconds: int) -> int:
    """(b) of the base tree and of this one, interleaved, so that both see the same noise."""
    wrk = ensure_wrk()
    pin = len(os.sched_getaffinity(0)) >= 2
    base = base.resolve()
    if not (base / "bridge/cli.py").is_file():
        raise SystemExit(f"{base} holds no bridge package")
    rows: dict[str, list[Row]] = {"base": [], "work": []}
    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        logs = Path(tmp)
        script = logs / "seed.lua"
        script.write_text(lua_script(seed_templates()))
        bench = Bench(wrk, script, logs, seconds, pin)
        with kafka_broker(logs, bench.load_cores) as kafka:
            for n in range(rounds):
                order = ("base", "work") if n % 2 == 0 else ("work", "base")
                for which in order:
                    src = base if which == "base" else ROOT
                    rows[which].append(
                        bench.bridge(f"(b) {which} #{n + 1}", kafka, 1, pin, src=src)
                    )
    print_table([row for pair in zip(rows["base"], rows["work"], strict=True) for row in pair])
    good = all(KafkaCheck.of(row).passed() for row in rows["base"] + rows["work"])
    failed = sum(
        r.wrk.non2xx + r.wrk.socket_errors + r.wrk.timeouts for v in rows.values() for r in v
    )
    median = {k: statistics.median(r.per_cpu for r in v) for k, v in rows.items()}
    rate = {k: statistics.median(r.wrk.rate for r in v) for k, v in rows.items()}
    p99 = {k: statistics.median(r.wrk.p99_ms for r in v) for k, v in rows.items()}
    for k in rows:
        print(
            f"{k}: median {median[k]:,.0f} req/CPU-s ({1e6 / median[k]:.0f} us CPU/request),"
            f" {rate[k]:,.0f} req/s, p99 {p99[k]:.1f} ms"
        )
    print(f"work/base requests per CPU-s: {median['work'] / median['base']:.3f}")
    print(f"failed requests: {failed}")
    return 0 if good and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
