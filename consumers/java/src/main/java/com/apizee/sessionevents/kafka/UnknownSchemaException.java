package com.apizee.sessionevents.kafka;

import java.util.Optional;
import java.util.OptionalInt;
import org.apache.kafka.common.errors.SerializationException;

/**
 * A record names a writer schema this deserializer cannot find: a single-object fingerprint that
 * is in neither the bundled (current and released) schemas nor {@code apizee.writer.schemas}, or
 * a Confluent schema id the registry does not hold (or no registry is configured).
 *
 * <p>A {@link SerializationException}, so a {@code KafkaConsumer} reports it as a {@code
 * RecordDeserializationException} with the partition and offset of the record.
 */
public class UnknownSchemaException extends SerializationException {
  private static final long serialVersionUID = 1L;

  private final String fingerprint;
  private final Integer schemaId;

  private UnknownSchemaException(String message, String fingerprint, Integer schemaId) {
    super(message);
    this.fingerprint = fingerprint;
    this.schemaId = schemaId;
  }

  static UnknownSchemaException forFingerprint(String fingerprintHex, String topic) {
    return new UnknownSchemaException(
        "unknown schema fingerprint "
            + fingerprintHex
            + " (Avro single-object record on topic "
            + topic
            + "): not in this kit's schemas (current and released) nor in "
            + ApizeeDeserializerConfig.WRITER_SCHEMAS
            + "; a newer bridge wrote it: update the kit or add its .avsc there",
        fingerprintHex,
        null);
  }

  static UnknownSchemaException forSchemaId(int id, String topic, String why) {
    return new UnknownSchemaException(
        "unknown schema id " + id + " (Confluent-framed record on topic " + topic + "): " + why,
        null,
        id);
  }

  /** The CRC-64-AVRO fingerprint in hex, header byte order (as in schemas/fingerprints.json). */
  public Optional<String> fingerprint() {
    return Optional.ofNullable(fingerprint);
  }

  /** The Schema Registry id of a Confluent-framed record. */
  public OptionalInt schemaId() {
    return schemaId == null ? OptionalInt.empty() : OptionalInt.of(schemaId);
  }
}
