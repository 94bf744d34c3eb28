package com.apizee.sessionevents.kafka;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Set;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.specific.SpecificRecord;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.MethodSource;

/** Every record of tests/vectors (written by the Python codec) decodes equal to its JSON. */
class VectorsTest {
  private static final ApizeeAvroDeserializer SPECIFIC =
      Fixtures.deserializer(true, Fixtures.EVOLUTION_SCHEMAS.toString());
  private static final ApizeeAvroDeserializer GENERIC =
      Fixtures.deserializer(false, Fixtures.EVOLUTION_SCHEMAS.toString());

  static Stream<Path> vectors() {
    List<Path> all = new ArrayList<>();
    for (String dir : List.of("events", "unknown", "rest", "evolution")) {
      all.addAll(Fixtures.binFiles(Fixtures.VECTORS.resolve(dir)));
    }
    return all.stream();
  }

  static Stream<Path> evolutionVectors() {
    return Fixtures.binFiles(Fixtures.VECTORS.resolve("evolution")).stream();
  }

  private static JsonNode expected(Path bin) {
    String name = bin.getFileName().toString().replaceAll("\\.bin$", ".json");
    return Fixtures.readJson(bin.resolveSibling(name));
  }

  @Test
  void thereIsOneVectorPerEventTypeAndTheUnknownType() {
    Set<String> eventTypes =
        ApizeeSchemas.bundled().currentSchemas().keySet().stream()
            .map(n -> ApizeeSchemas.bundled().eventType(n).orElseThrow())
            .filter(t -> !t.isEmpty())
            .collect(Collectors.toCollection(TreeSet::new));
    assertEquals(32, eventTypes.size());
    Set<String> files =
        Fixtures.binFiles(Fixtures.VECTORS.resolve("events")).stream()
            .map(p -> p.getFileName().toString().replaceAll("\\.bin$", ""))
            .collect(Collectors.toCollection(TreeSet::new));
    assertEquals(eventTypes, files);
    assertEquals(1, Fixtures.binFiles(Fixtures.VECTORS.resolve("unknown")).size());
    assertTrue(Fixtures.binFiles(Fixtures.VECTORS.resolve("evolution")).size() >= 1);
    assertEquals(32 + 1 + 3 + 5, vectors().count(), "vectors added? update this count");
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("vectors")
  void specificReaderDecodesEqual(Path bin) {
    JsonNode expected = expected(bin);
    byte[] data = Fixtures.readBytes(bin);
    assertEquals(expected.get("fingerprint").asText(), Fixtures.hex(data, 2, 10));
    GenericRecord record = SPECIFIC.deserialize("apizee.session-events.test", data);
    assertInstanceOf(SpecificRecord.class, record);
    // The generated class of the current schema: what a consumer's code is written against.
    assertEquals(expected.get("schema").asText(), record.getClass().getName());
    Fixtures.assertSameFields(expected.get("record"), RecordJson.of(record), bin.toString());
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("vectors")
  void genericReaderDecodesEqual(Path bin) {
    JsonNode expected = expected(bin);
    GenericRecord record =
        GENERIC.deserialize("apizee.session-events.test", Fixtures.readBytes(bin));
    assertInstanceOf(GenericData.Record.class, record);
    assertEquals(expected.get("schema").asText(), record.getSchema().getFullName());
    Fixtures.assertSameFields(expected.get("record"), RecordJson.of(record), bin.toString());
  }

  @ParameterizedTest(name = "{0}")
  @MethodSource("evolutionVectors")
  void withoutItsWriterSchemaAnEvolutionRecordNamesItsFingerprint(Path bin) {
    String fingerprint = expected(bin).get("fingerprint").asText();
    ApizeeAvroDeserializer bare = Fixtures.deserializer(true);
    UnknownSchemaException error =
        assertThrows(
            UnknownSchemaException.class,
            () -> bare.deserialize("apizee.session-events.media", Fixtures.readBytes(bin)));
    assertEquals(fingerprint, error.fingerprint().orElseThrow());
    assertTrue(error.schemaId().isEmpty());
    assertTrue(error.getMessage().contains(fingerprint), error.getMessage());
    assertTrue(error.getMessage().contains("apizee.session-events.media"), error.getMessage());
  }
}
