package com.apizee.sessionevents.kafka;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Base64;
import java.util.List;
import java.util.Map;
import java.util.Optional;
import java.util.concurrent.ConcurrentHashMap;
import org.apache.avro.Schema;
import org.apache.avro.SchemaParseException;
import org.apache.kafka.common.errors.InterruptException;
import org.apache.kafka.common.errors.SerializationException;

/**
 * Reads writer schemas by id from a Confluent-compatible Schema Registry ({@code GET
 * /schemas/ids/{id}}), caching each: an id names one schema forever, so a registry outage after
 * the first record of each schema does not stop consumption.
 */
final class SchemaRegistryClient {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final String ACCEPT =
      "application/vnd.schemaregistry.v1+json, application/vnd.schemaregistry+json, application/json";

  private final List<URI> baseUrls;
  private final Optional<String> authorization;
  private final Duration timeout;
  private final HttpClient http;
  private final Map<Integer, Schema> byId = new ConcurrentHashMap<>();

  SchemaRegistryClient(List<String> urls, Optional<String> userInfo, Duration timeout) {
    this.baseUrls = new ArrayList<>();
    Optional<String> auth = userInfo;
    for (String url : urls) {
      URI uri = URI.create(url.endsWith("/") ? url.substring(0, url.length() - 1) : url);
      if (uri.getUserInfo() != null) {
        // basic.auth.credentials.source=URL: credentials in the URL, never sent as a URL.
        if (auth.isEmpty()) {
          auth = Optional.of(uri.getUserInfo());
        }
        uri = URI.create(uri.toString().replace(uri.getRawUserInfo() + "@", ""));
      }
      baseUrls.add(uri);
    }
    this.authorization =
        auth.map(
            u -> "Basic " + Base64.getEncoder().encodeToString(u.getBytes(StandardCharsets.UTF_8)));
    this.timeout = timeout;
    this.http = HttpClient.newBuilder().connectTimeout(timeout).build();
  }

  /** The writer schema of {@code id}; UnknownSchemaException when the registry has none. */
  Schema schema(int id, String topic) {
    Schema cached = byId.get(id);
    if (cached != null) {
      return cached;
    }
    Schema fetched = fetch(id, topic);
    Schema previous = byId.putIfAbsent(id, fetched);
    return previous != null ? previous : fetched;
  }

  private Schema fetch(int id, String topic) {
    List<String> failures = new ArrayList<>();
    for (URI base : baseUrls) {
      HttpRequest.Builder request =
          HttpRequest.newBuilder(URI.create(base + "/schemas/ids/" + id))
              .timeout(timeout)
              .header("Accept", ACCEPT)
              .GET();
      authorization.ifPresent(a -> request.header("Authorization", a));
      HttpResponse<String> response;
      try {
        response = http.send(request.build(), HttpResponse.BodyHandlers.ofString());
      } catch (IOException e) {
        failures.add(base + ": " + e);
        continue;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new InterruptException(e);
      }
      int status = response.statusCode();
      if (status == 404) {
        throw UnknownSchemaException.forSchemaId(
            id, topic, "the registry at " + base + " has no such schema: " + brief(response.body()));
      }
      if (status != 200) {
        failures.add(base + ": HTTP " + status + " " + brief(response.body()));
        continue;
      }
      return parse(id, base, response.body());
    }
    throw new SerializationException(
        "schema id " + id + " (topic " + topic + "): no registry answered: " + failures);
  }

  private static Schema parse(int id, URI base, String body) {
    try {
      JsonNode answer = JSON.readTree(body);
      JsonNode type = answer.get("schemaType");
      if (type != null && !type.isNull() && !"AVRO".equals(type.asText())) {
        throw new SerializationException(
            "schema id " + id + " at " + base + " is " + type.asText() + ", not AVRO");
      }
      JsonNode references = answer.get("references");
      if (references != null && references.size() > 0) {
        // The bridge registers self-contained schemas; references would be another writer.
        throw new SerializationException(
            "schema id " + id + " at " + base + " has references, which this kit does not follow");
      }
      JsonNode schema = answer.get("schema");
      if (schema == null || !schema.isTextual()) {
        throw new SerializationException(
            "schema id " + id + " at " + base + ": no \"schema\" in " + brief(body));
      }
      return new Schema.Parser().parse(schema.asText());
    } catch (IOException | SchemaParseException e) {
      throw new SerializationException(
          "schema id " + id + " at " + base + ": not an Avro schema: " + e.getMessage(), e);
    }
  }

  private static String brief(String body) {
    String oneLine = body.replaceAll("\\s+", " ").strip();
    return oneLine.length() > 300 ? oneLine.substring(0, 297) + "..." : oneLine;
  }
}
