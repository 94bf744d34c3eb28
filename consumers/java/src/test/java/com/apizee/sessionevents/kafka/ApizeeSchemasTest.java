package com.apizee.sessionevents.kafka;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertSame;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.specific.SpecificData;
import org.junit.jupiter.api.Test;

/** The bundled schemas are the repository's, fingerprinted as the bridge does. */
class ApizeeSchemasTest {
  private static final ApizeeSchemas SCHEMAS = ApizeeSchemas.bundled();

  @Test
  void javaFingerprintsAreTheOnesInFingerprintsJson() {
    JsonNode index = Fixtures.readJson(Fixtures.SCHEMAS.resolve("fingerprints.json"));
    TreeSet<String> indexed = new TreeSet<>();
    index.fieldNames().forEachRemaining(indexed::add);
    TreeSet<String> computed =
        SCHEMAS.currentSchemas().values().stream()
            .map(s -> ApizeeSchemas.fingerprintHex(ApizeeSchemas.fingerprint(s)))
            .collect(Collectors.toCollection(TreeSet::new));
    assertEquals(33, computed.size());
    assertEquals(indexed, computed);
  }

  @Test
  void everyReleasedSetIsBundledAndResolves() throws IOException {
    List<String> onDisk;
    try (Stream<Path> dirs = Files.list(Fixtures.SCHEMAS.resolve("released"))) {
      onDisk = dirs.filter(Files::isDirectory).map(p -> p.getFileName().toString()).sorted().toList();
    }
    // released/v1, v2, ... with no gap: the loader stops at the first missing version.
    assertEquals(onDisk, SCHEMAS.releasedVersions());
    for (String version : onDisk) {
      JsonNode index = Fixtures.readJson(Fixtures.SCHEMAS.resolve("released/" + version + "/fingerprints.json"));
      index.fieldNames().forEachRemaining(hex -> {
        long fingerprint = Long.parseUnsignedLong(hex, 16);
        fingerprint = Long.reverseBytes(fingerprint);
        assertNotNull(SCHEMAS.findByFingerprint(fingerprint), version + " " + hex);
      });
    }
  }

  @Test
  void generatedClassesAreTheCurrentSchemas() {
    for (Map.Entry<String, Schema> e : SCHEMAS.currentSchemas().entrySet()) {
      Class<?> generated = SpecificData.get().getClass(e.getValue());
      assertNotNull(generated, e.getKey());
      // The same schema but for the plugin's stringType=String mark on every string.
      String classSchema =
          SpecificData.get().getSchema(generated).toString()
              .replace(",\"avro.java.string\":\"String\"", "")
              .replace("{\"type\":\"string\"}", "\"string\"");
      assertEquals(e.getValue().toString(), classSchema, e.getKey());
      assertSame(e.getValue(), SCHEMAS.readerFor(e.getValue()));
    }
  }

  @Test
  void categoriesAreTheBridgesTopicSuffixes() {
    assertEquals(
        List.of("consent", "geo", "media", "mediaDevice", "session", "survey", "ticket", "unknown"),
        SCHEMAS.categories());
  }
}
