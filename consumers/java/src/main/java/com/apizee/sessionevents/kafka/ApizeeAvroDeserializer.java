package com.apizee.sessionevents.kafka;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.AvroRuntimeException;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DatumReader;
import org.apache.avro.io.DecoderFactory;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.specific.SpecificData;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.common.errors.SerializationException;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.Deserializer;

/**
 * Kafka value deserializer for the records the Apizee bridge writes, in either framing.
 *
 * <ul>
 *   <li>Avro single-object encoding ({@code C3 01}, 8-byte little-endian CRC-64-AVRO fingerprint,
 *       body), the bridge's default: read by Avro's {@link BinaryMessageDecoder}, the writer
 *       schema found by fingerprint among the kit's current and released schemas (plus {@code
 *       apizee.writer.schemas}).
 *   <li>Confluent wire format ({@code 00}, 4-byte big-endian schema id, body), the bridge in
 *       registry mode: the writer schema fetched once per id from {@code schema.registry.url}.
 * </ul>
 *
 * <p>Either way the record is resolved to the kit's current schema of the same record name
 * (schema evolution). With {@code specific.avro.reader=true} the result is the generated class
 * ({@code com.apizee.sessionevents.TicketNew}, ...; they are GenericRecords too), else a {@link
 * GenericData.Record}. A null value (tombstone) gives null.
 *
 * <p>Configured by Kafka when named in {@code value.deserializer}; an instance handed to the
 * KafkaConsumer constructor is used as built: build it with {@link
 * #ApizeeAvroDeserializer(Map)}, or it reads single-object records as GenericRecords.
 */
public class ApizeeAvroDeserializer implements Deserializer<GenericRecord> {
  private static final byte[] SINGLE_OBJECT_MAGIC = {(byte) 0xC3, (byte) 0x01};
  private static final int SINGLE_OBJECT_HEADER = 10;
  private static final byte CONFLUENT_MAGIC = 0;
  private static final int CONFLUENT_HEADER = 5;

  private volatile ApizeeSchemas schemas = ApizeeSchemas.bundled();
  private volatile boolean specific;
  private volatile SchemaRegistryClient registry;
  private final Map<String, BinaryMessageDecoder<GenericRecord>> decoders =
      new ConcurrentHashMap<>();
  private final Map<Integer, DatumReader<GenericRecord>> readersById = new ConcurrentHashMap<>();

  /** Unconfigured: single-object records as GenericRecords; Kafka calls configure(). */
  public ApizeeAvroDeserializer() {}

  /** Configured for a value deserializer, to hand to the KafkaConsumer constructor. */
  public ApizeeAvroDeserializer(Map<String, ?> configs) {
    configure(configs, false);
  }

  @Override
  public void configure(Map<String, ?> configs, boolean isKey) {
    ApizeeDeserializerConfig config = new ApizeeDeserializerConfig(configs);
    List<Path> extra =
        config.getList(ApizeeDeserializerConfig.WRITER_SCHEMAS).stream().map(Path::of).toList();
    try {
      this.schemas = ApizeeSchemas.bundled().withWriterSchemas(extra);
    } catch (UncheckedIOException | AvroRuntimeException e) {
      throw new ConfigException(
          ApizeeDeserializerConfig.WRITER_SCHEMAS, extra.toString(), "unreadable: " + e.getMessage());
    }
    this.specific = config.getBoolean(ApizeeDeserializerConfig.SPECIFIC_AVRO_READER);
    List<String> urls = config.getList(ApizeeDeserializerConfig.SCHEMA_REGISTRY_URL);
    Optional<String> userInfo = Optional.empty();
    if ("USER_INFO"
        .equals(config.getString(ApizeeDeserializerConfig.BASIC_AUTH_CREDENTIALS_SOURCE))) {
      userInfo =
          Optional.ofNullable(config.getPassword(ApizeeDeserializerConfig.BASIC_AUTH_USER_INFO))
              .map(p -> p.value())
              .filter(s -> !s.isEmpty());
    }
    Duration timeout =
        Duration.ofMillis(config.getInt(ApizeeDeserializerConfig.REGISTRY_REQUEST_TIMEOUT_MS));
    this.registry = urls.isEmpty() ? null : new SchemaRegistryClient(urls, userInfo, timeout);
    decoders.clear();
    readersById.clear();
  }

  /** The schemas this deserializer resolves single-object records against. */
  public ApizeeSchemas schemas() {
    return schemas;
  }

  @Override
  public GenericRecord deserialize(String topic, byte[] data) {
    return deserialize(topic, null, data);
  }

  @Override
  public GenericRecord deserialize(String topic, Headers headers, byte[] data) {
    if (data == null) {
      return null;
    }
    if (data.length >= SINGLE_OBJECT_HEADER
        && data[0] == SINGLE_OBJECT_MAGIC[0]
        && data[1] == SINGLE_OBJECT_MAGIC[1]) {
      return singleObject(topic, data);
    }
    if (data.length >= CONFLUENT_HEADER && data[0] == CONFLUENT_MAGIC) {
      return confluent(topic, data);
    }
    throw new SerializationException(
        "not an Apizee Avro record on topic "
            + topic
            + ": neither single-object (C3 01) nor Confluent (00) framing, "
            + data.length
            + " bytes starting "
            + hex(data, Math.min(data.length, 4)));
  }

  private GenericRecord singleObject(String topic, byte[] data) {
    long fingerprint = ByteBuffer.wrap(data, 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
    Schema writer = schemas.findByFingerprint(fingerprint);
    if (writer == null) {
      throw UnknownSchemaException.forFingerprint(
          ApizeeSchemas.fingerprintHex(fingerprint), topic);
    }
    Schema reader = readerFor(writer);
    BinaryMessageDecoder<GenericRecord> decoder =
        decoders.computeIfAbsent(
            reader.getFullName(), n -> new BinaryMessageDecoder<>(model(reader), reader, schemas));
    try {
      return decoder.decode(data);
    } catch (IOException | AvroRuntimeException | IndexOutOfBoundsException e) {
      throw new SerializationException(
          "corrupt "
              + writer.getFullName()
              + " record (fingerprint "
              + ApizeeSchemas.fingerprintHex(fingerprint)
              + ") on topic "
              + topic
              + ": "
              + e,
          e);
    }
  }

  private GenericRecord confluent(String topic, byte[] data) {
    int id = ByteBuffer.wrap(data, 1, 4).getInt();
    SchemaRegistryClient client = registry;
    if (client == null) {
      throw UnknownSchemaException.forSchemaId(
          id,
          topic,
          "the record is in the Confluent wire format and "
              + ApizeeDeserializerConfig.SCHEMA_REGISTRY_URL
              + " is not set");
    }
    DatumReader<GenericRecord> reader = readersById.get(id);
    if (reader == null) {
      Schema writer = client.schema(id, topic);
      reader = readerOf(writer, readerFor(writer));
      readersById.putIfAbsent(id, reader);
    }
    BinaryDecoder body =
        DecoderFactory.get().binaryDecoder(data, CONFLUENT_HEADER, data.length - CONFLUENT_HEADER, null);
    try {
      return reader.read(null, body);
    } catch (IOException | AvroRuntimeException | IndexOutOfBoundsException e) {
      throw new SerializationException(
          "corrupt record with schema id " + id + " on topic " + topic + ": " + e, e);
    }
  }

  private Schema readerFor(Schema writer) {
    Schema current = schemas.readerFor(writer);
    if (!specific) {
      return current;
    }
    // The generated class's own schema: the same, with its strings marked java.lang.String.
    Class<?> generated = SpecificData.get().getClass(current);
    return generated == null ? current : SpecificData.get().getSchema(generated);
  }

  @SuppressWarnings("unchecked")
  private DatumReader<GenericRecord> readerOf(Schema writer, Schema reader) {
    return (DatumReader<GenericRecord>) model(reader).createDatumReader(writer, reader);
  }

  private GenericData model(Schema reader) {
    // The generated class's own model carries its logical-type conversions (Instant).
    return specific ? SpecificData.getForSchema(reader) : GenericData.get();
  }

  @Override
  public void close() {
    // Nothing held open: java.net.http connections close with the client when unused.
  }

  private static String hex(byte[] data, int n) {
    StringBuilder out = new StringBuilder();
    for (int i = 0; i < n; i++) {
      out.append(String.format("%02x", data[i]));
    }
    return out.toString();
  }
}
