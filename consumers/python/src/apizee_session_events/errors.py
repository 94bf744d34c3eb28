"""The errors of this package, in one hierarchy: catch DecodeError for every decoding failure."""

from __future__ import annotations


class DecodeError(Exception):
    """Bytes that are not a record of the bridge's event topics, or a corrupt one.

    Raised while reading Kafka (`apizee_session_events.kafka`), it also says where the record
    is: `topic`, `partition` and `offset` are set and lead its message.
    """

    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    def __str__(self) -> str:
        message = super().__str__()
        if self.topic is None:
            return message
        return f"{self.topic} partition {self.partition} offset {self.offset}: {message}"


class UnknownSchemaError(DecodeError):
    """A record names a schema (fingerprint or registry id) that is nowhere to be found."""


class RegistryUnavailableError(DecodeError):
    """The Schema Registry could not be asked (unreachable, 5xx, refused, or a bad answer).

    `outcome` is a short label (`connection_error`, `client_error`, `server_error`) and
    `status` the HTTP status when the registry answered one.
    """

    def __init__(self, message: str, *, outcome: str, status: int | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.status = status
