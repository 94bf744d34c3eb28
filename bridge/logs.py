"""Structured logs (structlog): JSON lines in production, readable lines on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO, Literal, TextIO, cast

import orjson
import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (text, or its buffer for bytes).

    Loggers are cached on first use; bound to the stream object of that moment, they would
    keep writing to it after it was replaced (and closed), as test runners' captures are.
    """

    def __init__(self, binary: bool) -> None:
        self._binary = binary

    def write(self, data: Any) -> int:
        stream: Any = sys.stderr.buffer if self._binary else sys.stderr
        written: int = stream.write(data)
        return written

    def flush(self) -> None:
        (sys.stderr.buffer if self._binary else sys.stderr).flush()


def configure_logging(level: str, fmt: Literal["json", "console"]) -> None:
    """Configure structlog, and render the libraries' stdlib logging the same way."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    stdlib_renderer: structlog.typing.Processor
    factory: Any
    if fmt == "json":
        renderer: structlog.typing.Processor = structlog.processors.JSONRenderer(
            serializer=orjson.dumps
        )
        stdlib_renderer = structlog.processors.JSONRenderer()
        factory = structlog.BytesLoggerFactory(cast(BinaryIO, _CurrentStderr(binary=True)))
    else:
        renderer = stdlib_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        factory = structlog.PrintLoggerFactory(cast(TextIO, _CurrentStderr(binary=False)))
    structlog.configure(
        processors=[*shared, renderer],
        # Filtering bound loggers drop below-level calls at almost no cost on the hot path.
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(cast(TextIO, _CurrentStderr(binary=False)))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                stdlib_renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # aiokafka and aiohttp are chatty at INFO: their warnings and errors, unless debugging.
    root.setLevel(numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING))
    # At DEBUG aiokafka's connection logger prints every request, SASL PLAIN credentials
    # included: never below INFO.
    logging.getLogger("aiokafka.conn").setLevel(max(numeric, logging.INFO))
