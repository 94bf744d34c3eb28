"""The Confluent-compatible Schema Registry: register the bridge's schemas, fetch one by id.

Registry mode registers the 33 schemas at start-up, in the background: until every id is
known the bridge is not ready (the reason is in /readyz) and retries with backoff; once they
are, the registry is never asked again, so an outage no longer matters. A schema the registry
refuses (409 incompatible, 422 invalid) stops the bridge.

A small aiohttp client rather than confluent-kafka's: its registry client needs the
`schemaregistry` extra (httpx2, authlib, cachetools, attrs) and the librdkafka wheel in
production, for the three calls made here, and a second HTTP stack beside aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import quote

import aiohttp
import structlog
from apizee_session_events.registry import (
    CONTENT_TYPE,
    basic_auth_header,
    error_message,
    ssl_context,
)
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from bridge import metrics
from bridge.config import SchemaSettings
from bridge.errors import SchemaRegistryError, SchemaRegistryUnavailableError, SchemaRejectedError

log = structlog.get_logger(__name__)

# The Confluent REST API's own media type; Confluent, Karapace and Apicurio accept it.
_CONCURRENCY: Final = 8
_FIRST_RETRY_SECONDS: Final = 0.5

SubjectStrategy = Literal["topic_record", "record"]


def subject_name(strategy: SubjectStrategy, topic: str, record_full_name: str) -> str:
    """TopicRecordNameStrategy (`{topic}-{record}`) or RecordNameStrategy (`{record}`)."""
    return f"{topic}-{record_full_name}" if strategy == "topic_record" else record_full_name


def outcome_of(status: int) -> str:
    """The metric label of an HTTP status the registry answered."""
    if status < 400:
        return "ok"
    if status == 409:
        return "conflict"
    if status == 422:
        return "invalid"
    if status in (401, 403):
        return "unauthorized"
    if status == 404:
        return "not_found"
    return "server_error" if status >= 500 else "client_error"


@dataclass(frozen=True, slots=True)
class SchemaToRegister:
    """One schema of the bridge and the subject it goes under."""

    event_type: str
    subject: str
    schema_text: str


class RegistryClient:
    """The two calls of the Confluent REST API the bridge makes, over one aiohttp session."""

    def __init__(self, settings: SchemaSettings) -> None:
        if settings.registry_url is None:
            raise ValueError("RegistryClient needs settings.registry_url")
        self.url = settings.registry_url
        self._timeout = aiohttp.ClientTimeout(total=settings.registry_timeout_seconds)
        self._headers = {"Accept": CONTENT_TYPE, "Content-Type": CONTENT_TYPE}
        if settings.registry_username is not None and settings.registry_password is not None:
            self._headers["Authorization"] = basic_auth_header(
                settings.registry_username, settings.registry_password.get_secret_value()
            )
        self._ssl = ssl_context(settings.registry_ca_file)
        self._session: aiohttp.ClientSession | None = None
        self._requests_by = metrics.Children(metrics.SCHEMA_REGISTRY_REQUESTS)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def register(self, subject: str, schema_text: str) -> int:
        """The id of `schema_text` under `subject`, registering it if the subject lacks it."""
        body = json.dumps({"schemaType": "AVRO", "schema": schema_text}).encode()
        answer = await self._request(
            "POST", f"/subjects/{quote(subject, safe='')}/versions", subject, body
        )
        schema_id = answer.get("id")
        if not isinstance(schema_id, int):
            raise SchemaRegistryUnavailableError(
                f"registry answered subject {subject!r} without an id", outcome="client_error"
            )
        return schema_id

    async def _request(self, method: str, path: str, subject: str, body: bytes) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("RegistryClient.start() was not called")
        try:
            async with self._session.request(method, self.url + path, data=body) as response:
                payload = await response.read()
                status = response.status
        except TimeoutError:
            self._requests_by("timeout").inc()
            raise SchemaRegistryUnavailableError(
                f"no answer from {self.url} within {self._timeout.total:g}s", outcome="timeout"
            ) from None
        except aiohttp.ClientError as exc:
            self._requests_by("connection_error").inc()
            raise SchemaRegistryUnavailableError(
                f"cannot reach {self.url}: {type(exc).__name__}: {exc}",
                outcome="connection_error",
            ) from None
        outcome = outcome_of(status)
        self._requests_by(outcome).inc()
        if outcome == "ok":
            try:
                answer = json.loads(payload)
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                raise SchemaRegistryUnavailableError(
                    f"{self.url} answered {status} with a body that is not a JSON object",
                    outcome="client_error",
                    status=status,
                )
            return answer
        message = error_message(payload)
        if outcome in ("conflict", "invalid"):
            raise SchemaRejectedError(subject, message, outcome=outcome, status=status)
        hint = {
            "unauthorized": "; check BRIDGE_SCHEMA_REGISTRY_USERNAME/PASSWORD",
            "not_found": "; check BRIDGE_SCHEMA_REGISTRY_URL (Apicurio: .../apis/ccompat/v7)",
        }.get(outcome, "")
        raise SchemaRegistryUnavailableError(
            f"{self.url} answered {status} for subject {subject!r}: {message}{hint}",
            outcome=outcome,
            status=status,
        )


class SchemaRegistration:
    """Registers the schemas in the background, retried with backoff until every id is known.

    `on_registered` receives eventType -> id once; `not_ready_reason` says what is missing
    meanwhile. A schema the registry refuses is logged (one line: subject and the registry's
    message) and `finished` ends with that SchemaRejectedError: the bridge must stop.
    """

    def __init__(
        self,
        settings: SchemaSettings,
        schemas: list[SchemaToRegister],
        on_registered: Callable[[Mapping[str, int]], None],
    ) -> None:
        self._settings = settings
        self._schemas = schemas
        self._on_registered = on_registered
        self._client = RegistryClient(settings)
        self._ids: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._attempts = 0
        self._last_error = "registration not started"
        self._registered = asyncio.Event()
        metrics.SCHEMAS_REGISTERED.set(0)

    @property
    def schema_ids(self) -> Mapping[str, int]:
        return dict(self._ids)

    @property
    def not_ready_reason(self) -> str | None:
        if self._registered.is_set():
            return None
        return (
            f"schemas not registered with the schema registry yet"
            f" ({len(self._ids)}/{len(self._schemas)}, attempt {self._attempts}):"
            f" {self._last_error}"
        )

    async def wait_registered(self) -> None:
        await self._registered.wait()

    @property
    def finished(self) -> asyncio.Task[None]:
        """Done once registered (result None) or refused (raises SchemaRejectedError)."""
        if self._task is None:
            raise RuntimeError("SchemaRegistration.start() was not called")
        return self._task

    async def start(self) -> None:
        await self._client.start()
        self._task = asyncio.create_task(self._run(), name="schema-registration")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._client.close()

    async def _run(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(SchemaRegistryUnavailableError),
            wait=wait_exponential_jitter(
                multiplier=_FIRST_RETRY_SECONDS,
                jitter=_FIRST_RETRY_SECONDS,
                max=self._settings.registry_retry_max_seconds,
            ),
            before_sleep=self._retrying,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._register_missing()
        except SchemaRejectedError as exc:
            metrics.SCHEMA_REGISTRY_FAILURES.labels(kind="rejected").inc()
            self._last_error = str(exc)
            log.error(
                "schema_rejected",
                subject=exc.subject,
                status=exc.status,
                registry_message=exc.registry_message,
            )
            raise
        finally:
            # The session is needed no more: registered, refused or stopped.
            await self._client.close()
        self._registered.set()
        log.info(
            "schemas_registered",
            registry=self._client.url,
            schemas=len(self._ids),
            attempts=self._attempts,
            ids=sorted(set(self._ids.values())),
        )
        self._on_registered(dict(self._ids))

    async def _register_missing(self) -> None:
        self._attempts += 1
        semaphore = asyncio.Semaphore(_CONCURRENCY)

        async def one(schema: SchemaToRegister) -> None:
            async with semaphore:
                self._ids[schema.event_type] = await self._client.register(
                    schema.subject, schema.schema_text
                )
                metrics.SCHEMAS_REGISTERED.set(len(self._ids))

        missing = [s for s in self._schemas if s.event_type not in self._ids]
        results = await asyncio.gather(*(one(s) for s in missing), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        # A refusal wins over unavailability: retrying cannot cure it.
        for error in errors:
            if isinstance(error, SchemaRejectedError):
                raise error
        for error in errors:
            if not isinstance(error, SchemaRegistryError):
                raise error
        if errors:
            raise errors[0]

    def _retrying(self, state: Any) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        self._last_error = str(error)
        metrics.SCHEMA_REGISTRY_FAILURES.labels(kind="unavailable").inc()
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "schema_registry_unavailable",
            error=self._last_error,
            outcome=getattr(error, "outcome", None),
            attempt=self._attempts,
            retry_in_seconds=round(delay, 2),
        )
