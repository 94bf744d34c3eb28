package com.apizee.sessionevents.kafka;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeSet;
import java.util.stream.Stream;

/** Where the repository's schemas and vectors are (set by Surefire), and JSON comparison. */
final class Fixtures {
  static final ObjectMapper JSON = new ObjectMapper();
  static final Path SCHEMAS = Path.of(property("apizee.schemas.dir"));
  static final Path VECTORS = Path.of(property("apizee.vectors.dir"));
  static final Path JAVA_VECTORS = Path.of(property("apizee.java-vectors.dir"));
  static final Path EVOLUTION_SCHEMAS = VECTORS.resolve("evolution/schemas");

  private Fixtures() {}

  private static String property(String name) {
    String value = System.getProperty(name);
    if (value == null) {
      throw new IllegalStateException(name + " is not set: run the tests through Maven");
    }
    return value;
  }

  static JsonNode readJson(Path path) {
    try {
      return JSON.readTree(path.toFile());
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static byte[] readBytes(Path path) {
    try {
      return Files.readAllBytes(path);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  /** The .bin files of one vectors folder, sorted. */
  static List<Path> binFiles(Path dir) {
    try (Stream<Path> files = Files.list(dir)) {
      return files.filter(p -> p.toString().endsWith(".bin")).sorted().toList();
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  static ApizeeAvroDeserializer deserializer(boolean specific, String... writerSchemas) {
    return new ApizeeAvroDeserializer(
        Map.of(
            ApizeeDeserializerConfig.SPECIFIC_AVRO_READER, String.valueOf(specific),
            ApizeeDeserializerConfig.WRITER_SCHEMAS, String.join(",", writerSchemas)));
  }

  static String hex(byte[] data, int from, int to) {
    StringBuilder out = new StringBuilder();
    for (int i = from; i < to; i++) {
      out.append(String.format("%02x", data[i]));
    }
    return out.toString();
  }

  /**
   * Field by field: the same keys at every level, equal strings/booleans/nulls, integral numbers
   * equal exactly, floating numbers equal as doubles. The path names the first difference.
   */
  static void assertSameFields(JsonNode expected, JsonNode actual, String path) {
    if (expected.isObject()) {
      assertTrue(actual.isObject(), path + ": expected an object, got " + actual);
      TreeSet<String> want = new TreeSet<>();
      expected.fieldNames().forEachRemaining(want::add);
      TreeSet<String> got = new TreeSet<>();
      actual.fieldNames().forEachRemaining(got::add);
      assertEquals(want, got, path + ": field names");
      for (Iterator<String> it = want.iterator(); it.hasNext(); ) {
        String name = it.next();
        assertSameFields(expected.get(name), actual.get(name), path + "." + name);
      }
    } else if (expected.isArray()) {
      assertTrue(actual.isArray(), path + ": expected an array, got " + actual);
      assertEquals(expected.size(), actual.size(), path + ": length");
      for (int i = 0; i < expected.size(); i++) {
        assertSameFields(expected.get(i), actual.get(i), path + "[" + i + "]");
      }
    } else if (expected.isIntegralNumber()) {
      assertTrue(actual.isIntegralNumber(), path + ": expected an integer, got " + actual);
      assertEquals(expected.bigIntegerValue(), actual.bigIntegerValue(), path);
    } else if (expected.isNumber()) {
      assertTrue(actual.isNumber(), path + ": expected a number, got " + actual);
      assertEquals(expected.doubleValue(), actual.doubleValue(), 0.0, path);
    } else if (expected.isTextual() || expected.isBoolean() || expected.isNull()) {
      assertEquals(expected, actual, path);
    } else {
      fail(path + ": unexpected JSON " + expected);
    }
  }
}
