"""Decode the Apizee session events that apizee-kafka-bridge writes to Kafka.

    from apizee_session_events import Decoder
    fields = Decoder().decode(record_value)

`apizee_session_events.kafka` (extra `[kafka]`, confluent-kafka) reads the bridge's topics.
"""

from __future__ import annotations

from importlib.metadata import version

from apizee_session_events.bundled import categories, event_topics, event_types
from apizee_session_events.decoder import DecodedRecord, Decoder
from apizee_session_events.errors import DecodeError, RegistryUnavailableError, UnknownSchemaError

# The distribution's version, which setuptools read from VERSION (the repository's, linked).
__version__ = version("apizee-session-events")

__all__ = [
    "DecodeError",
    "DecodedRecord",
    "Decoder",
    "RegistryUnavailableError",
    "UnknownSchemaError",
    "__version__",
    "categories",
    "event_topics",
    "event_types",
]
