"""apizee-kafka-bridge: Apizee session events into Kafka, typed and durable."""

from importlib.metadata import version

# Read from the installed distribution, whose version setuptools took from the repository's
# VERSION file: the one place a release sets it.
__version__ = version("apizee-kafka-bridge")
