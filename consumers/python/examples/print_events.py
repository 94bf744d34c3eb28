"""Print the bridge's events, one line each, until 10 s pass without a new one."""

import os

from apizee_session_events import Decoder
from apizee_session_events.kafka import read_events

# The bridge's own variables (`source .run/env` after `make run` sets them).
bootstrap_servers = os.environ.get("BRIDGE_KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
prefix = os.environ.get("BRIDGE_KAFKA_TOPIC_PREFIX", "apizee.session-events")
# Set when the bridge runs in registry mode (Confluent framing); unset: bundled schemas.
registry_url = os.environ.get("BRIDGE_SCHEMA_REGISTRY_URL")

events = read_events(
    bootstrap_servers,
    prefix=prefix,
    decoder=Decoder(registry_url=registry_url),
    # group_id=None: a group of its own, so every run reads from the oldest record kept
    # (auto_offset_reset="earliest"); only committed records (isolation_level="read_committed").
    idle_timeout_seconds=10,  # stop once 10 s pass without a new event
    join_timeout_seconds=60,  # give up if Kafka does not answer within a minute
)
for event in events:
    fields = event.fields  # decoded Avro; occurredAt is an aware UTC datetime
    print(
        event.topic,
        fields["eventType"],
        f"ticketId={fields['ticketId']}",
        f"eventId={fields['eventId']}",
        f"occurredAt={fields['occurredAt'].isoformat()}",
        flush=True,
    )
