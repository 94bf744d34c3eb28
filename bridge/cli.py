"""The `apizee-bridge` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import __version__

if TYPE_CHECKING:
    from bridge.config import BridgeSettings

# Exit status for an unusable configuration (sysexits' EX_USAGE is 64; 2 is argparse's).
EXIT_CONFIG = 2


def _load_settings_or_exit(
    *, require_webhook_auth: bool = True, **overrides: Any
) -> BridgeSettings:
    from bridge.config import ConfigError, load_settings

    try:
        return load_settings(require_webhook_auth=require_webhook_auth, **overrides)
    except ConfigError as exc:
        print(f"apizee-bridge: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from bridge.app import run, run_workers
    from bridge.errors import SchemaRejectedError, TransactionsUnavailableError

    overrides: dict[str, Any] = {}
    if args.workers is not None:
        overrides["ingress"] = {"workers": args.workers}
    settings = _load_settings_or_exit(**overrides)
    if settings.ingress.workers > 1:
        return run_workers(settings, settings.ingress.workers)
    try:
        run(settings)
    except (SchemaRejectedError, TransactionsUnavailableError):
        # Logged once where it happened: the subject and the registry's message, or why
        # the cluster cannot run exactly_once.
        return EXIT_CONFIG
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from bridge.config import env_table, redacted_dump

    if args.env_docs:
        print(env_table())
        return 0
    settings = _load_settings_or_exit()
    print(json.dumps(redacted_dump(settings), indent=2, default=str))
    return 0


def _cmd_dev(args: argparse.Namespace) -> int:
    from bridge.devtools.dev import DevOptions, run_dev

    return run_dev(
        DevOptions(
            simulator=not args.no_simulator,
            registry=args.registry,
            broker=args.broker,
            run_dir=args.run_dir,
        )
    )


def _cmd_schemas(args: argparse.Namespace) -> int:
    from bridge.schemas import schema_files, write_schema_files

    directory: Path = args.dir
    if args.check:
        stale = [
            rel
            for rel, text in schema_files().items()
            if not (directory / rel).is_file()
            or (directory / rel).read_text(encoding="utf-8") != text
        ]
        for rel in stale:
            print(f"out of date: {directory / rel}", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schema_files(directory):
        print(path)
    return 0


def _read_ticket_ids(args: argparse.Namespace) -> list[int]:
    raw: list[str] = list(args.ticket or [])
    if args.tickets_file is not None:
        try:
            text = Path(args.tickets_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise SystemExit(
                f"apizee-bridge backfill: cannot read {args.tickets_file}: {exc}"
            ) from None
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                raw.extend(line.replace(",", " ").split())
    ids: list[int] = []
    for value in raw:
        try:
            ticket_id = int(value)
        except ValueError:
            raise SystemExit(f"apizee-bridge backfill: not a ticket id: {value!r}") from None
        if ticket_id <= 0:
            raise SystemExit(f"apizee-bridge backfill: not a ticket id: {value!r}")
        if ticket_id not in ids:
            ids.append(ticket_id)
    if not ids:
        raise SystemExit("apizee-bridge backfill: no tickets given (--ticket or --tickets-file)")
    return ids


def _cmd_backfill(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.app import BackfillError, backfill
    from bridge.logs import configure_command_logging

    ticket_ids = _read_ticket_ids(args)
    # It publishes from Apizee's REST API: no webhook is served, none need be authenticated.
    settings = _load_settings_or_exit(require_webhook_auth=False)
    if settings.apizee.base_url is None:
        print(
            "apizee-bridge: invalid configuration:\nBRIDGE_APIZEE_BASE_URL: required by backfill",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    configure_command_logging(settings.log.level)
    try:
        results = asyncio.run(backfill(settings, ticket_ids, ready_timeout=args.ready_timeout))
    except BackfillError as exc:
        print(f"apizee-bridge backfill: {exc}", file=sys.stderr)
        return 1
    totals = {"fetched": 0, "published": 0, "present": 0, "rejected": 0}
    failed = [r for r in results if r.error is not None]
    for r in results:
        status = f"FAILED ({r.error})" if r.error else "ok"
        print(
            f"ticket {r.ticket_id}: fetched {r.fetched}, published {r.published}, "
            f"already present {r.present}, dead-lettered {r.rejected}, {status}"
        )
        totals["fetched"] += r.fetched
        totals["published"] += r.published
        totals["present"] += r.present
        totals["rejected"] += r.rejected
    print(
        f"backfill: {len(results)} tickets, fetched {totals['fetched']}, "
        f"published {totals['published']}, already present {totals['present']}, "
        f"dead-lettered {totals['rejected']}, failed {len(failed)}"
    )
    return 1 if failed else 0


def _say(line: str) -> None:
    print(line, flush=True)


def _cmd_check(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.commands.check import run_check
    from bridge.config import ConfigError, load_settings
    from bridge.logs import configure_command_logging

    try:
        # Missing webhook auth is one of the findings (a FAIL line), not a reason to stop.
        settings = load_settings(require_webhook_auth=False)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            _say(
                f"FAIL  configuration: {line}. Fix: set the variable as the message says"
                " (`apizee-bridge config --env-docs` lists them all)"
            )
        _say("check: the configuration is invalid; nothing else was checked")
        return EXIT_CONFIG
    configure_command_logging(settings.log.level)
    return asyncio.run(
        run_check(settings, _say, within=args.timeout, apizee_ticket=args.apizee_ticket)
    )


def _cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.commands.console import event_decoder
    from bridge.commands.tail import Filter, Tail, TailArgumentError, run_tail, topic_names
    from bridge.logs import configure_command_logging

    # It only reads Kafka: no webhook auth is needed.
    settings = _load_settings_or_exit(require_webhook_auth=False)
    try:
        topics = topic_names(settings.kafka, args.topic or [])
    except TailArgumentError as exc:
        args.parser.error(str(exc))
    configure_command_logging(settings.log.level)
    tail = Tail(
        settings.kafka,
        topics,
        decode=event_decoder(settings.schema),
        where=Filter(
            tickets=frozenset(args.ticket or ()),
            types=frozenset(args.type or ()),
            sources=frozenset(args.source or ()),
        ),
        as_json=args.json,
        from_beginning=args.from_beginning,
        count=args.count,
        connect_timeout=args.connect_timeout,
    )
    return asyncio.run(run_tail(tail))


def _cmd_replay(args: argparse.Namespace) -> int:
    import asyncio

    from bridge.commands.replay import Options, Selection, default_group, run_replay
    from bridge.logs import configure_command_logging

    if args.since is not None and args.until is not None and args.since > args.until:
        args.parser.error("--since is after --until")
    # It reads Kafka and writes Kafka, serving no webhook: no webhook auth is needed.
    settings = _load_settings_or_exit(require_webhook_auth=False)
    configure_command_logging(settings.log.level)
    selection = Selection(
        source=args.source,
        since_ms=args.since,
        until_ms=args.until,
        kinds=frozenset(args.kind or ()),
        tickets=frozenset(args.ticket or ()),
    )
    options = Options(
        selection=selection,
        group=args.group or default_group(settings, args.source),
        dry_run=args.dry_run,
        limit=args.limit,
        restart=args.restart,
        ready_timeout=args.ready_timeout,
    )
    return asyncio.run(
        run_replay(settings, options, _say, lambda line: print(line, file=sys.stderr, flush=True))
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    from bridge.devtools.simulator import simulate_command

    return simulate_command(args)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return int(text)


def _iso_time(text: str) -> int:
    from bridge.commands.replay import parse_time

    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ticket_id(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a ticket id: {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apizee-bridge",
        description=(
            "Streams Apizee session events into Kafka. Configuration comes from BRIDGE_* "
            "environment variables and an optional TOML file (BRIDGE_CONFIG_FILE); "
            "see `apizee-bridge config --env-docs`."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the webhook ingress and publisher",
        description="Serve webhooks on the public port and metrics/probes on the admin port "
        "until SIGTERM; exit 2 on invalid configuration.",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N processes sharing the ports with SO_REUSEPORT (default BRIDGE_INGRESS_WORKERS)",
    )
    run.set_defaults(func=_cmd_run)

    config = sub.add_parser(
        "config",
        help="print the effective configuration, secrets redacted",
        description="Validate the configuration and print it as JSON with secrets redacted; "
        "exit 2 if it is invalid.",
    )
    config.add_argument(
        "--env-docs",
        action="store_true",
        help="print every environment variable with its default and meaning (Markdown)",
    )
    config.set_defaults(func=_cmd_config)

    dev = sub.add_parser(
        "dev",
        help="run a local broker, the bridge, a simulated Apizee and a console consumer"
        " (what `make run` does)",
        description="Start a local broker (unless BRIDGE_KAFKA_BOOTSTRAP_SERVERS is set): Apache"
        " Kafka from `make kafka`'s jars when Java is there, else tansu; the bridge with a"
        " generated token, a simulated Apizee (REST API for the poller, webhooks with 20%"
        " dropped), and print each event landing in Kafka. The session's settings go to"
        " .run/env (sourceable) for the commands the banner prints; removed at exit.",
    )
    dev.add_argument(
        "--registry",
        action="store_true",
        help="also start the test schema registry (`make registry`) and run the bridge in"
        " registry mode",
    )
    dev.add_argument(
        "--broker",
        choices=("kafka", "tansu"),
        help="the local broker (also BRIDGE_DEV_BROKER); default: Apache Kafka when Java and"
        " its jars are there, else tansu",
    )
    dev.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="where the session writes its env file, Kafka's data and the servers' logs (also"
        " BRIDGE_DEV_RUN_DIR; default .run)",
    )
    dev.add_argument(
        "--no-simulator",
        action="store_true",
        help="run no simulated Apizee (also BRIDGE_DEV_SIMULATOR=false); with"
        " BRIDGE_APIZEE_BASE_URL set, the real Apizee is polled instead",
    )
    dev.set_defaults(func=_cmd_dev)

    schemas = sub.add_parser(
        "schemas",
        help="write (or check) the Avro schema files generated from the event catalog",
        description="Generate schemas/ from the event catalog, or check it is up to date.",
    )
    schemas.add_argument("dir", type=Path, nargs="?", default=Path("schemas"))
    mode = schemas.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write the files (default)")
    mode.add_argument("--check", action="store_true", help="exit 1 if any file differs")
    schemas.set_defaults(func=_cmd_schemas)

    fill = sub.add_parser(
        "backfill",
        help="publish what is missing of some tickets, from Apizee's REST API, then exit",
        description="Fetch the events of the given tickets from Apizee's REST API, publish "
        "those the ticket state in Kafka lacks (source=POLLER), hand the tickets to the "
        "running replicas' poller, print a summary; exit 1 if any ticket failed, 2 on "
        "invalid configuration. Needs BRIDGE_APIZEE_BASE_URL and a token.",
    )
    fill.add_argument("--ticket", action="append", metavar="ID", help="a ticket id; repeatable")
    fill.add_argument(
        "--tickets-file",
        type=Path,
        metavar="F",
        help="ticket ids, whitespace or comma separated, '#' comments",
    )
    fill.add_argument(
        "--ready-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="give up if Kafka is not reachable within S seconds (default 30)",
    )
    fill.set_defaults(func=_cmd_backfill)

    check = sub.add_parser(
        "check",
        help="preflight of a deployment: brokers, topics, rights, Apizee token; exit 0 only"
        " when all pass",
        description="Check, without changing anything, what the bridge needs before traffic"
        " arrives, printing one line per item (OK, FAIL with the fix, or SKIP): the"
        " configuration; each bootstrap broker with the configured security (TLS, SASL); the"
        " brokers the cluster advertises; every topic (partitions, replication factor,"
        " min.insync.replicas, cleanup.policy) and this principal's rights on it; its right to"
        " read the poller's consumer group; Apizee's REST API with the token (one request)."
        " Exit 0 when every check passes, 1 when one fails, 2 on invalid configuration.",
    )
    check.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="give up on each broker or request after S seconds (default 10)",
    )
    check.add_argument(
        "--apizee-ticket",
        type=_ticket_id,
        default=1,
        metavar="ID",
        help="the ticket whose events are asked for to test the token; a 404 still proves"
        " the token is accepted (default 1)",
    )
    check.set_defaults(func=_cmd_check)

    tail = sub.add_parser(
        "tail",
        help="print the bridge's topics, decoded, as records land (or from the beginning)",
        description="Print each record of the bridge's event topics and DLQ as it lands (or"
        " from the beginning with --from-beginning): events decoded (topic, partition@offset,"
        " key, eventType, id, source, time, attributes), dead letters with their kind, source,"
        " ticket, reason and the start of their body; as text lines, or one JSON object per"
        " record with --json. Filters combine (AND); a repeated one is an OR. Joins no"
        " consumer group. Stops on Ctrl-C or after --count records (exit 0); exit 1 when Kafka"
        " cannot be reached or the topics may not be read, 2 on bad arguments.",
    )
    tail.add_argument(
        "--from-beginning", action="store_true", help="start at the oldest retained record"
    )
    tail.add_argument(
        "--topic",
        action="append",
        metavar="NAME",
        help="a category (ticket, media, ...), unknown, dlq, or a full topic name; repeatable"
        " (default: all of them)",
    )
    tail.add_argument(
        "--ticket", action="append", type=_ticket_id, metavar="ID", help="only this ticket"
    )
    tail.add_argument(
        "--type", action="append", metavar="EVENT_TYPE", help="only this eventType (events)"
    )
    tail.add_argument(
        "--source",
        action="append",
        choices=("WEBHOOK", "POLLER"),
        help="only what this path brought (the source header)",
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per record")
    tail.add_argument(
        "--count", type=_positive_int, metavar="N", help="stop after N records printed"
    )
    tail.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=15.0,
        metavar="S",
        help="give up if Kafka does not answer within S seconds at start (default 15)",
    )
    tail.set_defaults(func=_cmd_tail, parser=tail)

    replay = sub.add_parser(
        "replay",
        help="publish what was parked on the DLQ or the unknown topic and now passes",
        description="Read the records parked on {prefix}.dlq or {prefix}.unknown (those the"
        " filters select), run each through today's validation and catalog again, publish what"
        " now passes to its topic with a replayed-from header (topic:partition:offset of the"
        " parked record), and leave what still fails where it is, counted by reason. Event ids"
        " already on their topic are skipped; progress is committed to a consumer group of the"
        " replay's own, so a rerun after a crash continues where it stopped. Prints a summary"
        " table; exit 0 when every selected record was handled, 1 when some still fail (or the"
        " run could not finish), 2 on bad arguments. Runs beside a running bridge.",
    )
    replay.add_argument(
        "--from",
        dest="source",
        required=True,
        choices=("dlq", "unknown"),
        help="the topic to replay: {prefix}.dlq or {prefix}.unknown",
    )
    replay.add_argument(
        "--since",
        type=_iso_time,
        metavar="TIME",
        help="only records parked at or after TIME (ISO 8601, e.g. 2026-11-25T16:00:00Z)",
    )
    replay.add_argument(
        "--until", type=_iso_time, metavar="TIME", help="only records parked at or before TIME"
    )
    replay.add_argument(
        "--kind",
        action="append",
        metavar="KIND",
        help="only this kind; repeatable: the dlq-kind of a dead letter (invalid_json,"
        " invalid_envelope, record_too_large, encode_error), the eventType of an unknown event",
    )
    replay.add_argument(
        "--ticket", action="append", type=_ticket_id, metavar="ID", help="only this ticket"
    )
    replay.add_argument(
        "--dry-run",
        action="store_true",
        help="judge and count, publish and commit nothing",
    )
    replay.add_argument(
        "--limit",
        type=_positive_int,
        metavar="N",
        help="at most N selected records this run (the next run continues after them)",
    )
    replay.add_argument(
        "--group",
        metavar="GROUP",
        help="the consumer group the progress is committed to (default:"
        " <BRIDGE_POLLER_GROUP_ID>.replay-dlq or .replay-unknown)",
    )
    replay.add_argument(
        "--restart",
        action="store_true",
        help="ignore the committed progress: start at --since or the beginning (what is"
        " already on its topic is skipped)",
    )
    replay.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="give up if Kafka is not reachable within S seconds (default 30)",
    )
    replay.set_defaults(func=_cmd_replay, parser=replay)

    sim = sub.add_parser(
        "simulate",
        help="run a fake Apizee: REST events endpoint plus webhooks sent to a bridge (dev/test)",
        description="Generate N tickets with realistic event timelines over all 32 event types, "
        "serve GET /api/v3/tickets/{ticketId}/events with a Bearer token, send each event's "
        "webhook to --bridge-url through a lossy network, print a summary, then keep serving "
        "REST until Ctrl-C (or exit with --exit-when-done).",
    )
    gen = sim.add_argument_group("events")
    gen.add_argument("--tickets", type=int, default=20, metavar="N", help="tickets (default 20)")
    gen.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    gen.add_argument(
        "--rate",
        type=float,
        metavar="EVENTS_PER_S",
        help="record events at this pace; default: all at once",
    )
    gen.add_argument(
        "--unknown-rate",
        type=float,
        default=0.0,
        metavar="P",
        help="probability of an extra event of an unknown eventType after each event",
    )
    rest = sim.add_argument_group("REST endpoint and its failures")
    rest.add_argument("--rest-host", default="127.0.0.1")
    rest.add_argument("--rest-port", type=int, default=0, help="default: a free port")
    rest.add_argument("--rest-token", default="simulator-token", help="expected Bearer token")
    rest.add_argument("--fail-429", type=float, default=0.0, metavar="P", help="429 probability")
    rest.add_argument("--retry-after", type=float, default=1.0, metavar="S", help="429 wait")
    rest.add_argument("--retry-after-form", choices=("delta", "date", "mixed"), default="mixed")
    rest.add_argument("--fail-500", type=float, default=0.0, metavar="P")
    rest.add_argument("--fail-502", type=float, default=0.0, metavar="P")
    rest.add_argument("--fail-503", type=float, default=0.0, metavar="P")
    rest.add_argument("--slow", type=float, default=0.0, metavar="P", help="slow answers")
    rest.add_argument("--slow-seconds", type=float, default=2.0, metavar="S")
    rest.add_argument("--malformed", type=float, default=0.0, metavar="P", help="bad answers")
    rest.add_argument(
        "--outage",
        action="append",
        metavar="START:DURATION",
        help="all requests 503 during this window (seconds after start); repeatable",
    )
    rest.add_argument(
        "--window",
        action="append",
        metavar="KIND:START:DURATION",
        help="a fault for every request in a window: outage, 429, 500, 502, 503, slow, "
        "malformed; repeatable",
    )
    hook = sim.add_argument_group("webhooks")
    hook.add_argument("--bridge-url", metavar="URL", help="POST webhooks here (else REST only)")
    hook.add_argument("--token", help="shared token sent in --token-header")
    hook.add_argument("--token-header", default="X-Webhook-Token")
    hook.add_argument("--hmac-secret", metavar="S", help="sign bodies with HMAC-SHA256")
    hook.add_argument("--hmac-header", default="X-Apizee-Signature")
    hook.add_argument("--hmac-encoding", choices=("hex", "base64"), default="hex")
    hook.add_argument("--hmac-prefix", default="", help="e.g. sha256=")
    hook.add_argument("--timestamp-header", help="sign '{timestamp}.{body}', timestamp here")
    hook.add_argument("--drop", type=float, default=0.0, metavar="P", help="drop rate")
    hook.add_argument("--duplicate", type=float, default=0.0, metavar="P", help="duplicate rate")
    hook.add_argument("--reorder-window", type=int, default=1, metavar="K", help="shuffle span")
    hook.add_argument("--latency", type=float, default=0.0, metavar="S")
    hook.add_argument("--jitter", type=float, default=0.0, metavar="S")
    hook.add_argument("--concurrency", type=int, default=8)
    hook.add_argument("--no-retry", action="store_true", help="do not retry 429/5xx/errors")
    hook.add_argument("--max-retries", type=int, default=5)
    sim.add_argument(
        "--exit-when-done", action="store_true", help="exit once every webhook is settled"
    )
    sim.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:  # Ctrl-C before the event loop took over the signal
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
