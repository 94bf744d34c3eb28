"""apizee-kafka-bridge: Apizee session events into Kafka, typed and durable."""

__version__ = "0.1.0"
