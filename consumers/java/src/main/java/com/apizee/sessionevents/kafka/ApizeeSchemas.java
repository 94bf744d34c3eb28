package com.apizee.sessionevents.kafka;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.io.InputStream;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.TreeSet;
import java.util.stream.Stream;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.message.SchemaStore;
import org.apache.avro.specific.AvroGenerated;
import org.apache.avro.util.ClassSecurityValidator;
import org.apache.avro.util.ClassSecurityValidator.ClassSecurityPredicate;

/**
 * The writer schemas a single-object record may name, by fingerprint, and the current reader
 * schema of each record name.
 *
 * <p>Bundled in the jar from the repository's {@code schemas/}: the current set and every
 * released set ({@code released/v1}, {@code v2}, ...), each listed by its {@code
 * fingerprints.json}. Extra writer schemas (a bridge release newer than the kit) can be added.
 */
public final class ApizeeSchemas implements SchemaStore {
  static final String ROOT = "apizee-schemas/";
  /** The Java package of the generated classes (the schemas' namespace). */
  public static final String NAMESPACE = "com.apizee.sessionevents";

  private static final ObjectMapper JSON = new ObjectMapper();

  static {
    // Avro 1.12 loads a record's class by name only when a ClassSecurityValidator trusts it.
    // Trust this kit's generated classes (their package, @AvroGenerated) and nothing else, in
    // addition to whatever the application already trusts.
    ClassSecurityPredicate previous = ClassSecurityValidator.getGlobal();
    ClassSecurityValidator.setGlobal(
        ClassSecurityValidator.composite(
            previous,
            c -> NAMESPACE.equals(c.getPackageName()) && c.isAnnotationPresent(AvroGenerated.class)));
  }

  private final Map<String, Schema> readers;
  private final Map<String, String> eventTypes;
  private final Map<Long, Schema> writers;
  private final List<String> released;

  private ApizeeSchemas(
      Map<String, Schema> readers,
      Map<String, String> eventTypes,
      Map<Long, Schema> writers,
      List<String> released) {
    this.readers = Collections.unmodifiableMap(readers);
    this.eventTypes = Collections.unmodifiableMap(eventTypes);
    this.writers = Collections.unmodifiableMap(writers);
    this.released = List.copyOf(released);
  }

  /** The schemas bundled in the kit: current and released (loaded once, immutable). */
  public static ApizeeSchemas bundled() {
    return Bundled.INSTANCE;
  }

  private static final class Bundled {
    static final ApizeeSchemas INSTANCE = load();
  }

  private static ApizeeSchemas load() {
    Map<String, Schema> readers = new LinkedHashMap<>();
    Map<String, String> eventTypes = new LinkedHashMap<>();
    Map<Long, Schema> writers = new LinkedHashMap<>();
    JsonNode current = loadIndex(ROOT).orElseThrow(() -> missing(ROOT + "fingerprints.json"));
    for (Map.Entry<String, Schema> e : loadSet(ROOT, current).entrySet()) {
      Schema schema = e.getValue();
      readers.put(schema.getFullName(), schema);
      writers.put(fingerprint(schema), schema);
      JsonNode eventType = current.get(e.getKey()).get("eventType");
      eventTypes.put(schema.getFullName(), eventType.isNull() ? "" : eventType.asText());
    }
    List<String> released = new ArrayList<>();
    // released/v1, v2, ...: the layout `make schemas` keeps; a test checks none is skipped.
    for (int v = 1; ; v++) {
      String dir = ROOT + "released/v" + v + "/";
      Optional<JsonNode> index = loadIndex(dir);
      if (index.isEmpty()) {
        break;
      }
      for (Schema schema : loadSet(dir, index.get()).values()) {
        writers.putIfAbsent(fingerprint(schema), schema);
      }
      released.add("v" + v);
    }
    return new ApizeeSchemas(readers, eventTypes, writers, released);
  }

  /** These schemas plus extra writer schemas: .avsc files, or folders of them. */
  public ApizeeSchemas withWriterSchemas(Collection<Path> paths) {
    Map<Long, Schema> more = new LinkedHashMap<>(writers);
    for (Path path : paths) {
      for (Path file : avscFiles(path)) {
        Schema schema = parse(file);
        more.putIfAbsent(fingerprint(schema), schema);
      }
    }
    return new ApizeeSchemas(
        new LinkedHashMap<>(readers), new LinkedHashMap<>(eventTypes), more, released);
  }

  /** The writer schema with this CRC-64-AVRO fingerprint (as Avro's SchemaStore wants it). */
  @Override
  public Schema findByFingerprint(long fingerprint) {
    return writers.get(fingerprint);
  }

  /**
   * The schema a record written with {@code writer} is read into: the current schema of the same
   * full name, or the writer itself for a record name this kit does not know.
   */
  public Schema readerFor(Schema writer) {
    return readers.getOrDefault(writer.getFullName(), writer);
  }

  /** Record full name to the current schema: the 32 event records and UnknownEvent. */
  public Map<String, Schema> currentSchemas() {
    return readers;
  }

  /** The eventType of a current record full name ("" for UnknownEvent), if it is one. */
  public Optional<String> eventType(String fullName) {
    return Optional.ofNullable(eventTypes.get(fullName));
  }

  /** The category topics' suffixes: the part of each eventType before the first dot, and unknown. */
  public List<String> categories() {
    TreeSet<String> categories = new TreeSet<>();
    for (String eventType : eventTypes.values()) {
      categories.add(eventType.isEmpty() ? "unknown" : eventType.split("\\.", 2)[0]);
    }
    return List.copyOf(categories);
  }

  /** Every fingerprint this store resolves. */
  public Map<Long, Schema> writerSchemas() {
    return writers;
  }

  /** The released versions bundled, in order (v1, v2, ...). */
  public List<String> releasedVersions() {
    return released;
  }

  /** CRC-64-AVRO of the Parsing Canonical Form: what single-object headers carry. */
  public static long fingerprint(Schema schema) {
    return SchemaNormalization.parsingFingerprint64(schema);
  }

  /** A fingerprint in hex, header byte order (little-endian), as in schemas/fingerprints.json. */
  public static String fingerprintHex(long fingerprint) {
    StringBuilder hex = new StringBuilder(16);
    for (int i = 0; i < 8; i++) {
      hex.append(String.format("%02x", (fingerprint >>> (8 * i)) & 0xff));
    }
    return hex.toString();
  }

  private static Optional<JsonNode> loadIndex(String dir) {
    try (InputStream in = resource(dir + "fingerprints.json")) {
      return in == null ? Optional.empty() : Optional.of(JSON.readTree(in));
    } catch (IOException e) {
      throw new UncheckedIOException(dir + "fingerprints.json", e);
    }
  }

  private static Map<String, Schema> loadSet(String dir, JsonNode index) {
    Map<String, Schema> set = new LinkedHashMap<>();
    for (Iterator<Map.Entry<String, JsonNode>> it = index.fields(); it.hasNext(); ) {
      Map.Entry<String, JsonNode> entry = it.next();
      String file = dir + entry.getValue().get("file").asText();
      Schema schema;
      try (InputStream in = resource(file)) {
        if (in == null) {
          throw missing(file);
        }
        schema = new Schema.Parser().parse(in);
      } catch (IOException e) {
        throw new UncheckedIOException(file, e);
      }
      String hex = fingerprintHex(fingerprint(schema));
      if (!hex.equals(entry.getKey())) {
        throw new IllegalStateException(
            file + " has fingerprint " + hex + ", its index says " + entry.getKey());
      }
      set.put(entry.getKey(), schema);
    }
    return set;
  }

  private static InputStream resource(String name) {
    return ApizeeSchemas.class.getClassLoader().getResourceAsStream(name);
  }

  private static IllegalStateException missing(String name) {
    return new IllegalStateException("the kit's jar lacks " + name + ": a broken build");
  }

  private static List<Path> avscFiles(Path path) {
    if (!Files.isDirectory(path)) {
      return List.of(path);
    }
    try (Stream<Path> files = Files.list(path)) {
      return files.filter(p -> p.toString().endsWith(".avsc")).sorted().toList();
    } catch (IOException e) {
      throw new UncheckedIOException(path.toString(), e);
    }
  }

  private static Schema parse(Path file) {
    try {
      return new Schema.Parser().parse(file.toFile());
    } catch (IOException e) {
      throw new UncheckedIOException(file.toString(), e);
    }
  }
}
