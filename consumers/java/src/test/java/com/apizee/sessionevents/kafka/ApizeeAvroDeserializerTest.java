package com.apizee.sessionevents.kafka;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.apizee.sessionevents.MediaOCRDone;
import java.io.IOException;
import java.net.ServerSocket;
import java.util.Arrays;
import java.util.Map;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.common.config.ConfigException;
import org.apache.kafka.common.errors.SerializationException;
import org.junit.jupiter.api.Test;

/** The deserializer's contract beyond the vectors: nulls, framing errors, what it cannot find. */
class ApizeeAvroDeserializerTest {
  private static final String TOPIC = "apizee.session-events.media";

  private static byte[] ocrVector() {
    return Fixtures.readBytes(Fixtures.VECTORS.resolve("events/media.OCRDone.bin"));
  }

  @Test
  void aTombstoneIsNull() {
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      assertNull(d.deserialize(TOPIC, null));
      assertNull(d.deserialize(TOPIC, null, (byte[]) null));
    }
  }

  @Test
  void unconfiguredItReadsGenericRecords() {
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      GenericRecord record = d.deserialize(TOPIC, ocrVector());
      assertEquals("Lorem\nipsum", record.get("text").toString());
    }
  }

  @Test
  void configuredByKafkaItReadsSpecificRecords() {
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      d.configure(Map.of("specific.avro.reader", true, "group.id", "ignored"), false);
      MediaOCRDone record = (MediaOCRDone) d.deserialize(TOPIC, ocrVector());
      assertEquals("Lorem\nipsum", record.getText());
      assertEquals(1749581447000L + 31_000, record.getOccurredAt().toEpochMilli());
    }
  }

  @Test
  void bytesThatAreNotFramedAreRefusedWithWhatTheyStartWith() {
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      SerializationException error =
          assertThrows(
              SerializationException.class, () -> d.deserialize(TOPIC, "{\"a\":1}".getBytes()));
      assertTrue(error.getMessage().contains("7b226122"), error.getMessage());
      assertTrue(error.getMessage().contains(TOPIC), error.getMessage());
    }
  }

  @Test
  void anUnknownFingerprintIsNamedInHex() {
    byte[] data = ocrVector();
    data[9] ^= 0x5a;
    String hex = Fixtures.hex(data, 2, 10);
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      UnknownSchemaException error =
          assertThrows(UnknownSchemaException.class, () -> d.deserialize(TOPIC, data));
      assertEquals(hex, error.fingerprint().orElseThrow());
      assertTrue(error.getMessage().contains("unknown schema fingerprint " + hex));
    }
  }

  @Test
  void aTruncatedBodyIsCorruptNotUnknown() {
    byte[] data = ocrVector();
    byte[] truncated = Arrays.copyOf(data, data.length - 8);
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      SerializationException error =
          assertThrows(SerializationException.class, () -> d.deserialize(TOPIC, truncated));
      assertTrue(!(error instanceof UnknownSchemaException));
      assertTrue(error.getMessage().startsWith("corrupt com.apizee.sessionevents.MediaOCRDone"));
    }
  }

  @Test
  void aConfluentRecordWithoutARegistryNamesItsSchemaId() {
    byte[] data = {0, 0, 0, 1, 44, 2, 4};
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      UnknownSchemaException error =
          assertThrows(UnknownSchemaException.class, () -> d.deserialize(TOPIC, data));
      assertEquals(300, error.schemaId().orElseThrow());
      assertTrue(error.fingerprint().isEmpty());
      assertTrue(error.getMessage().contains("schema id 300"), error.getMessage());
      assertTrue(error.getMessage().contains("schema.registry.url"), error.getMessage());
    }
  }

  @Test
  void anUnreachableRegistryIsASerializationErrorNamingIt() throws IOException {
    int port;
    try (ServerSocket socket = new ServerSocket(0)) {
      port = socket.getLocalPort(); // closed again: nothing listens there
    }
    byte[] data = {0, 0, 0, 0, 7, 2};
    try (ApizeeAvroDeserializer d =
        new ApizeeAvroDeserializer(
            Map.of(
                "schema.registry.url", "http://127.0.0.1:" + port,
                "apizee.registry.request.timeout.ms", 2000))) {
      SerializationException error =
          assertThrows(SerializationException.class, () -> d.deserialize(TOPIC, data));
      assertTrue(!(error instanceof UnknownSchemaException));
      assertTrue(error.getMessage().contains("schema id 7"), error.getMessage());
      assertTrue(error.getMessage().contains("127.0.0.1:" + port), error.getMessage());
    }
  }

  @Test
  void badSettingsAreRefusedAtConfigure() {
    try (ApizeeAvroDeserializer d = new ApizeeAvroDeserializer()) {
      assertThrows(
          ConfigException.class,
          () -> d.configure(Map.of("basic.auth.credentials.source", "SASL_INHERIT"), false));
      assertThrows(
          ConfigException.class, () -> d.configure(Map.of("specific.avro.reader", "yes"), false));
      ConfigException missing =
          assertThrows(
              ConfigException.class,
              () -> d.configure(Map.of("apizee.writer.schemas", "/nonexistent/x.avsc"), false));
      assertTrue(missing.getMessage().contains("/nonexistent/x.avsc"), missing.getMessage());
    }
  }
}
