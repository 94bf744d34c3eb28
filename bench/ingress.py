"""Ingress benchmark: wrk POSTs seed webhooks at concurrency 128 against a bare aiohttp
handler and the bridge (tansu broker, acks=all, full validation, Avro, token auth), and prints
requests/s, latency and the server's CPU seconds, with ratios of runs made in this process.

Configs: (a) bare handler on one core, (b) the bridge with one worker on one core, wrk and
the broker on the other; (c) the bridge with two workers, nothing pinned.

A fast but failing bridge must not look good: every non-2xx answer is counted (by wrk's
response() hook) and fails the run, and after each bridge config the run's topics are read
back: the records, their distinct event ids and the bridge's own count of "accepted"
answers must be equal, and at least what wrk saw answered 2xx.
Installs wrk with apt-get when it is missing (as root).
Usage: python bench/ingress.py [--duration S] [--linger-ms 0,5,20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from bridge.catalog import CATEGORIES, EVENTS, UNKNOWN_CATEGORY
from bridge.devbroker import TansuBroker, free_port

ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS = 128
WRK_THREADS = 2
WARMUP_SECONDS = 3
TICKETS = 1000
TOKEN = "bench-" + uuid.uuid4().hex
WEBHOOK_PATH = "/webhooks/apizee"
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


def pin_all_threads(broker: TansuBroker, cores: str | None) -> None:
    # -a: tansu is multi-threaded and its threads exist already.
    if cores is not None and broker.pid is not None:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cores, str(broker.pid)],
            check=True,
            stdout=subprocess.DEVNULL,
        )


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
    bootstrap: str, prefix: str, port: int, admin_port: int, workers: int, linger_ms: str | None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        BRIDGE_KAFKA_TOPIC_PREFIX=prefix,
        # tansu has no idempotent producer; one broker, so one replica.
        BRIDGE_KAFKA_ENABLE_IDEMPOTENCE="false",
        BRIDGE_KAFKA_TOPIC_REPLICATION_FACTOR="1",
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
        ids: set[bytes] = set()
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
                ids.update(v for k, v in message.headers() or () if k == "event-id")
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
    server_cpu: float
    broker_cpu: float
    kafka: KafkaContent | None = None  # what the run's topics hold, warm-up included
    sent_ok: int | None = None  # 2xx answers wrk counted, warm-up included
    # The bridge's /metrics count of answers by (status, reason), warm-up included.
    answers: Counter[tuple[int, str]] | None = None

    @property
    def per_cpu(self) -> float:
        return self.wrk.requests / self.server_cpu if self.server_cpu else float("nan")


@dataclass
class Bench:
    wrk: str
    script: Path
    broker: TansuBroker
    logs: Path
    seconds: int
    pin: bool
    runs: int = 0

    def load(self, url: str, seconds: int, cores: str | None) -> WrkResult:
        self.runs += 1
        return run_wrk(self.wrk, self.script, url, seconds, self.runs * RUN_ID_STRIDE, cores)

    def measure(self, name: str, url: str, root: int, cores: str | None) -> tuple[WrkResult, Row]:
        """Warm-up, then the measured run with the server tree's CPU time around it."""
        warmup = self.load(url, WARMUP_SECONDS, cores)
        pids = process_tree(root)
        broker = [self.broker.pid] if self.broker.pid is not None else []
        before, broker_before = cpu_seconds(pids), cpu_seconds(broker)
        result = self.load(url, self.seconds, cores)
        server_cpu, broker_cpu = cpu_seconds(pids) - before, cpu_seconds(broker) - broker_before
        return warmup, Row(name, result, server_cpu, broker_cpu)

    def bare(self) -> Row:
        port = free_port()
        argv = [sys.executable, str(ROOT / "bench/bare_server.py"), str(port)]
        if self.pin:
            argv = ["taskset", "-c", CORE_SERVER, *argv]
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        with server_process(argv, os.environ, self.logs / "bare.log") as pid:
            wait_until(lambda: http_ok(url, b"{}"), "bare server")
            _, row = self.measure("(a) bare aiohttp", url, pid, CORE_LOAD if self.pin else None)
        return row

    def bridge(
        self,
        name: str,
        workers: int,
        pinned: bool,
        linger_ms: str | None = None,
        src: Path | None = None,
    ) -> Row:
        """`src`: a directory holding another `bridge` package to run (python -m from there
        imports it before the installed one), e.g. a `git archive` of the base commit."""
        port, admin_port = free_port(), free_port()
        prefix = f"bench.{uuid.uuid4().hex[:8]}"
        env = bridge_env(
            self.broker.bootstrap_servers, prefix, port, admin_port, workers, linger_ms
        )
        argv = [sys.executable, "-m", "bridge.cli", "run"]
        if pinned:
            argv = ["taskset", "-c", CORE_SERVER, *argv]
        load_cores = CORE_LOAD if pinned else None
        pin_all_threads(self.broker, load_cores or (ALL_CORES if self.pin else None))
        url = f"http://127.0.0.1:{port}{WEBHOOK_PATH}"
        admin = f"http://127.0.0.1:{admin_port}"
        with server_process(argv, env, self.logs / f"bridge-{prefix}.log", cwd=src) as pid:
            # Each worker has its own producer; consecutive answers reach several of them.
            wait_until(
                lambda: all(http_ok(f"{admin}/readyz") for _ in range(10 * workers)), "bridge"
            )
            warmup, row = self.measure(name, url, pid, load_cores)
            answers = bridge_answers(admin)
        # The bridge flushed its producer on SIGTERM: every acknowledged record is in Kafka.
        kafka = read_topics(
            self.broker.bootstrap_servers,
            [f"{prefix}.{c}" for c in CATEGORIES],
            [f"{prefix}.{UNKNOWN_CATEGORY}", f"{prefix}.dlq"],
            expected=sum(answers.values()),
        )
        return Row(
            name,
            row.wrk,
            row.server_cpu,
            row.broker_cpu,
            kafka=kafka,
            sent_ok=warmup.ok + row.wrk.ok,
            answers=answers,
        )


# -- report -------------------------------------------------------------------------------


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'config':<34} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'non2xx':>6} {'sockerr':>7}"
        f" {'srv CPU s':>9} {'CPU %':>6} {'req/CPU-s':>9} {'wrk CPU s':>9} {'broker CPU s':>12}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        w = row.wrk
        print(
            f"{row.name:<34} {w.rate:>8,.0f} {w.p50_ms:>7.2f} {w.p99_ms:>7.2f} {w.non2xx:>6}"
            f" {w.socket_errors + w.timeouts:>7} {row.server_cpu:>9.2f}"
            f" {100 * row.server_cpu / w.seconds:>6.0f} {row.per_cpu:>9,.0f}"
            f" {w.cpu_seconds:>9.2f} {row.broker_cpu:>12.2f}"
        )


def check_kafka(row: Row) -> bool:
    """Every acknowledged event is in Kafka: what the topics hold is exactly what the bridge
    answered "accepted" to, and at least what wrk saw answered 2xx."""
    assert row.kafka is not None
    assert row.sent_ok is not None
    assert row.answers is not None
    accepted = row.answers[200, "accepted"]
    other = {f"{status} {reason}": n for (status, reason), n in row.answers.items() if n}
    other.pop("200 accepted", None)
    # wrk stops with requests in flight (warm-up and measured run): the bridge answers and
    # publishes them, wrk does not count them; at most one per connection per run.
    extra = accepted - row.sent_ok
    kafka = row.kafka
    good = (
        kafka.records == kafka.distinct_ids == accepted
        and 0 <= extra <= 2 * CONNECTIONS
        and kafka.rejected == 0
        and not other
    )
    print(
        f"kafka check {row.name}: {kafka.records:,} records read back from the category"
        f" topics, {kafka.distinct_ids:,} distinct event ids, bridge answered {accepted:,}"
        f" accepted (all three must be equal); wrk counted {row.sent_ok:,} 2xx (+{extra} in"
        f" flight at wrk stop, allowed 0..{2 * CONNECTIONS}); {kafka.rejected} on unknown/dlq,"
        f" other answers: {other or 'none'}: {'OK' if good else 'FAIL'}"
    )
    return good


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=12, help="measured seconds per config")
    parser.add_argument(
        "--linger-ms",
        default="",
        help="comma-separated BRIDGE_KAFKA_LINGER_MS values to run (b) with, e.g. 0,5,20",
    )
    parser.add_argument(
        "--base",
        type=Path,
        help="A/B mode: a directory with the base `bridge` package (e.g. `git archive HEAD"
        " bridge | tar -x -C DIR`); runs (b) alternately from there and from this tree",
    )
    parser.add_argument("--rounds", type=int, default=3, help="A/B mode: pairs of (b) runs")
    args = parser.parse_args()
    if args.base is not None:
        return compare(args.base, args.rounds, args.duration)
    wrk = ensure_wrk()
    pin = len(os.sched_getaffinity(0)) >= 2
    if not pin:
        print("fewer than 2 usable cores: nothing is pinned", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="bench-ingress-") as tmp:
        logs = Path(tmp)
        script = logs / "seed.lua"
        script.write_text(lua_script(seed_templates()))
        with TansuBroker(log_path=logs / "tansu.log") as broker:
            pin_all_threads(broker, CORE_LOAD if pin else None)
            bench = Bench(wrk, script, broker, logs, args.duration, pin)
            a = bench.bare()
            b = bench.bridge("(b) bridge 1 worker, pinned", 1, pinned=pin)
            c = bench.bridge("(c) bridge 2 workers, unpinned", 2, pinned=False)
            sweep = [
                bench.bridge(f"(b) linger_ms={linger}", 1, pinned=pin, linger_ms=linger)
                for linger in (x.strip() for x in args.linger_ms.split(","))
                if linger
            ]

    print(
        f"ingress benchmark: wrk -t{WRK_THREADS} -c{CONNECTIONS}, {WARMUP_SECONDS}s warm-up +"
        f" {args.duration}s measured, {len(EVENTS)} seed event types round-robin,"
        f" {'server on core 0, wrk + broker on core 1' if pin else 'unpinned'} for (a), (b)"
    )
    print_table([a, b, c, *sweep])
    print()
    b_over_a = b.wrk.rate / a.wrk.rate
    c_over_b = c.per_cpu / b.per_cpu
    print(
        f"b/a requests/s:           {b_over_a:.2f}  (goal >= {GOAL_B_OVER_A}: "
        f"{verdict(b_over_a >= GOAL_B_OVER_A)})"
    )
    print(
        f"p99 of (b):               {b.wrk.p99_ms:.1f} ms  (goal < {GOAL_P99_MS:.0f} ms: "
        f"{verdict(b.wrk.p99_ms < GOAL_P99_MS)})"
    )
    print(
        f"c/b requests per CPU-s:   {c_over_b:.2f}  (goal >= {GOAL_C_OVER_B_PER_CPU}: "
        f"{verdict(c_over_b >= GOAL_C_OVER_B_PER_CPU)})"
    )
    print(f"c/b requests/s:           {c.wrk.rate / b.wrk.rate:.2f}")
    print(f"b/a requests per CPU-s:   {b.per_cpu / a.per_cpu:.2f}  (less sensitive to other load)")
    if pin:
        for row in (a, b):
            share = row.server_cpu / row.wrk.seconds
            if share < BUSY_CORE_SHARE:
                print(
                    f"NOISE? {row.name} used only {share:.0%} of its pinned core: other"
                    " processes ran there (or the wrk + broker core was the limit), so its"
                    " requests/s and b/a understate it; requests per CPU-s hold better"
                )
    results = [check_kafka(row) for row in (b, c, *sweep)]
    errors = 0
    for row in (a, b, c, *sweep):
        w = row.wrk
        failed = w.non2xx + w.socket_errors + w.timeouts
        errors += failed
        if failed:
            print(
                f"{row.name}: {w.non2xx} non-2xx answers (statuses: {w.statuses or '-'}),"
                f" {w.socket_errors} socket errors, {w.timeouts} timeouts"
            )
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
        with TansuBroker(log_path=logs / "tansu.log") as broker:
            pin_all_threads(broker, CORE_LOAD if pin else None)
            bench = Bench(wrk, script, broker, logs, seconds, pin)
            for n in range(rounds):
                order = ("base", "work") if n % 2 == 0 else ("work", "base")
                for which in order:
                    src = base if which == "base" else ROOT
                    rows[which].append(bench.bridge(f"(b) {which} #{n + 1}", 1, pin, src=src))
    print_table([row for pair in zip(rows["base"], rows["work"], strict=True) for row in pair])
    good = all(check_kafka(row) for row in rows["base"] + rows["work"])
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
