package com.apizee.sessionevents.kafka;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.apizee.sessionevents.EventSource;
import com.apizee.sessionevents.GeoLocation;
import com.apizee.sessionevents.Person;
import com.apizee.sessionevents.SurveyAnswer;
import com.apizee.sessionevents.SurveyQuestion;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.avro.specific.SpecificData;
import org.apache.avro.specific.SpecificRecordBase;
import org.junit.jupiter.api.Test;

/**
 * The other direction: Java writes one record per event type and one UnknownEvent with Avro's
 * BinaryMessageEncoder (single-object framing) into target/java-vectors/, each with its expected
 * JSON; tests/vectors/test_java_vectors.py decodes them with bridge.codec.
 *
 * <p>Values are chosen to be unlike the Python vectors: event ids beyond 32 bits, non-ASCII and
 * non-BMP text, extreme ints and longs, coordinates that are not short decimals, POLLER and
 * WEBHOOK, null and non-null attributes and extra.
 */
class JavaVectorsWriterTest {
  private static final long TICKET = 4_294_967_301L;

  private static Object attribute(String name, int n) {
    return switch (name) {
      case "agent" -> Person.newBuilder()
          .setEmail("agent+" + n + "@example.com")
          .setPhone("")
          .setFirstname("Zoë")
          .setLastname("O'Brien \"the agent\"")
          .build();
      case "requestor" -> Person.newBuilder()
          .setEmail(null)
          .setPhone("+33 6 05 04 03 0" + (n % 10))
          .setFirstname("Łukasz")
          .setLastname("Nowak 👩‍💻")
          .build();
      case "geoloc" -> GeoLocation.newBuilder().setLat(-33.86881970000001).setLng(151.2092955).build();
      case "mediaId" -> Long.MAX_VALUE;
      case "text" -> "Première ligne\nsecond line\ttab 🎥 \u0000end";
      case "oldPriority" -> Integer.MIN_VALUE;
      case "newPriority" -> Integer.MAX_VALUE;
      case "surveyAnswer" -> SurveyAnswer.newBuilder()
          .setQuestions(
              List.of(
                  SurveyQuestion.newBuilder()
                      .setId(0L)
                      .setLabel(new LinkedHashMap<>(Map.of("fr", "Êtes-vous satisfait ?")))
                      .setAnswer(null)
                      .build(),
                  SurveyQuestion.newBuilder()
                      .setId(9_007_199_254_740_993L)
                      .setLabel(Map.of())
                      .setAnswer("Very satisfied")
                      .build()))
          .setFeedback("")
          .build();
      default -> throw new IllegalStateException(
          "a new attribute " + name + ": give it a value here");
    };
  }

  private static SpecificRecordBase record(Schema schema, String eventType, int n) {
    SpecificRecordBase record =
        (SpecificRecordBase) SpecificData.getForSchema(schema).newRecord(null, schema);
    record.put("eventId", 5_000_000_000L + n);
    record.put("eventType", eventType);
    record.put("eventCode", n % 2 == 0 ? null : n);
    record.put("ticketId", TICKET);
    record.put("conversationId", -1L - n);
    record.put("occurredAt", Instant.ofEpochMilli(1_780_000_000_123L + 1000L * n));
    record.put("source", n % 3 == 0 ? EventSource.POLLER : EventSource.WEBHOOK);
    record.put("receivedAt", Instant.ofEpochMilli(1_780_000_000_999L + 1000L * n));
    // The bridge's extra is compact JSON with sorted keys; so is this, so that Python's
    // re-encoding of what it decodes is byte for byte the same.
    record.put("extra", n % 4 == 1 ? "{\"_envelope\":{\"seq\":" + n + "},\"note\":\"Java écrit ça 🎥\"}" : null);
    List<Schema.Field> fields = schema.getFields();
    for (Schema.Field field : fields.subList(9, fields.size())) {
      record.put(field.name(), n % 5 == 4 ? null : attribute(field.name(), n));
    }
    return record;
  }

  @Test
  void writeOneRecordPerEventTypeForPython() throws IOException {
    ApizeeSchemas schemas = ApizeeSchemas.bundled();
    Path out = Fixtures.JAVA_VECTORS;
    if (Files.exists(out)) {
      try (Stream<Path> old = Files.walk(out)) {
        for (Path p : old.sorted(Comparator.reverseOrder()).toList()) {
          Files.delete(p);
        }
      }
    }
    Files.createDirectories(out);
    List<String> written = new ArrayList<>();
    int n = 0;
    ApizeeAvroDeserializer reader = Fixtures.deserializer(true);
    for (Schema schema : schemas.currentSchemas().values()) {
      String eventType = schemas.eventType(schema.getFullName()).orElseThrow();
      String name = eventType.isEmpty() ? "unknown.whiteboard.erased" : eventType;
      SpecificRecordBase record =
          record(schema, eventType.isEmpty() ? "whiteboard.erased" : eventType, n++);
      BinaryMessageEncoder<SpecificRecordBase> encoder =
          new BinaryMessageEncoder<>(SpecificData.getForSchema(schema), schema);
      ByteBuffer buffer = encoder.encode(record);
      byte[] data = new byte[buffer.remaining()];
      buffer.get(data);

      ObjectNode expected = Fixtures.JSON.createObjectNode();
      expected.put("framing", "single-object");
      expected.put("fingerprint", ApizeeSchemas.fingerprintHex(ApizeeSchemas.fingerprint(schema)));
      expected.put("schema", schema.getFullName());
      expected.put("writer", "java " + System.getProperty("java.version") + ", avro BinaryMessageEncoder");
      expected.set("record", RecordJson.of(record));
      Files.write(out.resolve(name + ".bin"), data);
      Files.writeString(
          out.resolve(name + ".json"),
          Fixtures.JSON.writerWithDefaultPrettyPrinter().writeValueAsString(expected) + "\n");
      written.add(name);

      // What Java writes, Java reads back the same (the Python side is the real check).
      Fixtures.assertSameFields(
          expected.get("record"), RecordJson.of(reader.deserialize("t", data)), name);
    }
    assertEquals(33, written.size());
  }
}
