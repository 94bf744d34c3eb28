"""What a client of a Confluent-compatible Schema Registry needs, on the standard library alone.

Used by the Decoder to fetch writer schemas by id (`GET /schemas/ids/{id}`); the bridge's own
asynchronous registry client shares its constants and helpers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

from apizee_session_events.errors import RegistryUnavailableError, UnknownSchemaError

CONTENT_TYPE: Final = "application/vnd.schemaregistry.v1+json"
# Registry messages are quoted in errors and logs: bounded.
MESSAGE_MAX_CHARS: Final = 500


def ssl_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """Verification against `ca_file` when given; None lets the client use the system CAs."""
    return None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def basic_auth_header(username: str, password: str) -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def error_message(body: bytes) -> str:
    """The registry's `message` from a Confluent error body, else the body's start."""
    text = body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError):
        parsed = json.loads(text)
        if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
            text = parsed["message"]
    text = " ".join(text.split())
    if len(text) > MESSAGE_MAX_CHARS:
        text = text[: MESSAGE_MAX_CHARS - 3] + "..."
    return text or "(empty answer)"


class SchemaFetcher:
    """Fetches writer schemas by id from one registry (blocking, stdlib HTTP)."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | Path | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout_seconds
        self._headers = {"Accept": CONTENT_TYPE}
        if username is not None and password is not None:
            self._headers["Authorization"] = basic_auth_header(username, password)
        self._ssl = ssl_context(Path(ca_file) if ca_file is not None else None)

    def __repr__(self) -> str:  # never the credentials
        return f"SchemaFetcher({self.url!r})"

    def schema(self, schema_id: int) -> dict[str, Any]:
        """The Avro record schema the registry holds under `schema_id`.

        Raises UnknownSchemaError when the registry has no such id (404), and
        RegistryUnavailableError when it cannot be asked or answers something else.
        """
        url = f"{self.url}/schemas/ids/{schema_id}"
        request = urllib.request.Request(url, headers=self._headers)  # noqa: S310
        try:
            with urllib.request.urlopen(  # noqa: S310 - http(s) URL given by the caller
                request, timeout=self._timeout, context=self._ssl
            ) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            message = error_message(exc.read())
            if exc.code == 404:
                raise UnknownSchemaError(
                    f"no schema with registry id {schema_id} in {self.url}: {message}"
                ) from None
            raise RegistryUnavailableError(
                f"{self.url} answered {exc.code} for schema id {schema_id}: {message}",
                outcome="client_error" if exc.code < 500 else "server_error",
                status=exc.code,
            ) from None
        except OSError as exc:
            raise RegistryUnavailableError(
                f"cannot reach {self.url} for schema id {schema_id}: {exc}",
                outcome="connection_error",
            ) from None
        try:
            schema = json.loads(json.loads(body)["schema"])
        except (ValueError, KeyError, TypeError):
            raise RegistryUnavailableError(
                f"{self.url} answered schema id {schema_id} without an Avro schema",
                outcome="client_error",
            ) from None
        if not isinstance(schema, dict) or schema.get("type") != "record":
            raise UnknownSchemaError(f"registry schema id {schema_id} is not an Avro record schema")
        return schema
