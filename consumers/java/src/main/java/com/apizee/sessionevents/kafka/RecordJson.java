package com.apizee.sessionevents.kafka;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.ByteBuffer;
import java.time.Instant;
import java.util.Collection;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericEnumSymbol;
import org.apache.avro.generic.IndexedRecord;

/**
 * A record in the stable JSON form the cross-language test vectors use (tests/vectors/README.md):
 * records and maps as objects, arrays as lists, enums as their symbol, unions as their branch's
 * value, timestamp-millis as epoch milliseconds, strings and numbers as they are.
 */
public final class RecordJson {
  private static final JsonNodeFactory NODES = JsonNodeFactory.instance;
  private static final ObjectMapper JSON = new ObjectMapper();

  private RecordJson() {}

  /** The record's fields, in schema order. */
  public static ObjectNode of(IndexedRecord record) {
    ObjectNode out = NODES.objectNode();
    for (Schema.Field field : record.getSchema().getFields()) {
      out.set(field.name(), value(record.get(field.pos())));
    }
    return out;
  }

  /** One line of JSON text. */
  public static String text(JsonNode node) {
    try {
      return JSON.writeValueAsString(node);
    } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
      throw new IllegalStateException(e);
    }
  }

  static JsonNode value(Object value) {
    if (value == null) {
      return NODES.nullNode();
    }
    if (value instanceof IndexedRecord record) {
      return of(record);
    }
    if (value instanceof Instant instant) {
      return NODES.numberNode(instant.toEpochMilli());
    }
    if (value instanceof CharSequence text) {
      return NODES.textNode(text.toString());
    }
    if (value instanceof Enum<?> symbol) {
      return NODES.textNode(symbol.name());
    }
    if (value instanceof GenericEnumSymbol<?> symbol) {
      return NODES.textNode(symbol.toString());
    }
    if (value instanceof Integer n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Long n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Double n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Float n) {
      return NODES.numberNode(n);
    }
    if (value instanceof Boolean b) {
      return NODES.booleanNode(b);
    }
    if (value instanceof Map<?, ?> map) {
      ObjectNode out = NODES.objectNode();
      map.forEach((k, v) -> out.set(k.toString(), value(v)));
      return out;
    }
    if (value instanceof Collection<?> items) {
      ArrayNode out = NODES.arrayNode();
      items.forEach(v -> out.add(value(v)));
      return out;
    }
    if (value instanceof ByteBuffer) {
      throw new IllegalArgumentException("no bytes fields in the Apizee schemas");
    }
    throw new IllegalArgumentException("unexpected Avro value " + value.getClass());
  }
}
