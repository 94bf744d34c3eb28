package com.apizee.sessionevents.kafka.examples;

import com.apizee.sessionevents.kafka.ApizeeConsumers;
import com.apizee.sessionevents.kafka.ApizeeDeserializerConfig;
import com.apizee.sessionevents.kafka.RecordJson;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.UUID;
import java.util.regex.Pattern;
import org.apache.avro.generic.GenericRecord;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;

/**
 * Follows one ticket's timeline across the category topics: subscribes to {@code
 * {prefix}.(consent|geo|media|mediaDevice|session|survey|ticket|unknown)} by pattern, reads them
 * from the beginning up to their current end, keeps the records whose key is the ticket id (the
 * bridge keys every record by ticketId) and prints them in order of occurredAt.
 *
 * <pre>
 * java -cp "target/classes:$(cat target/classpath.txt)" \
 *   com.apizee.sessionevents.kafka.examples.TicketTimeline \
 *   --bootstrap-servers localhost:9092 --ticket 361 [--prefix apizee.session-events]
 *   [--schema-registry-url http://registry:8081] [--json] [--timeout-ms 60000]
 *   [--property consumer.key=value ...]
 * </pre>
 *
 * <p>{@code --ticket} takes one ticket id. {@code --prefix} is the bridge's {@code
 * BRIDGE_KAFKA_TOPIC_PREFIX} (default {@code apizee.session-events}). {@code --timeout-ms} bounds
 * the whole read (group join included): past it the example fails rather than print a partial
 * timeline. {@code --json} prints one JSON object per record (topic, partition, offset, key,
 * headers, record in the stable form of {@link RecordJson}) instead of one line of text.
 *
 * <p>It reads with {@code isolation.level=read_committed} and {@code auto.offset.reset=earliest}
 * (the kit's defaults, {@link ApizeeConsumers#properties}), in a group of its own that commits
 * nothing. {@code --property key=value} sets any consumer setting over them, e.g. {@code
 * --property isolation.level=read_uncommitted} or {@code --property security.protocol=SSL}.
 */
public final class TicketTimeline {
  private TicketTimeline() {}

  /** One record of the ticket, with where it was read. */
  public record Entry(ConsumerRecord<String, GenericRecord> record) {
    long occurredAt() {
      return ((Instant) record.value().get("occurredAt")).toEpochMilli();
    }

    long eventId() {
      return (Long) record.value().get("eventId");
    }
  }

  public static void main(String[] args) {
    // The example's own logging (slf4j-simple): warnings only, unless asked otherwise.
    if (System.getProperty("org.slf4j.simpleLogger.defaultLogLevel") == null) {
      System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
    }
    Map<String, String> options = new HashMap<>();
    Properties overrides = new Properties();
    for (int i = 0; i < args.length; i++) {
      String arg = args[i];
      if (arg.equals("--json")) {
        options.put("json", "true");
      } else if (arg.equals("--property") && i + 1 < args.length) {
        String[] kv = args[++i].split("=", 2);
        overrides.put(kv[0], kv.length > 1 ? kv[1] : "");
      } else if (arg.startsWith("--") && i + 1 < args.length) {
        options.put(arg.substring(2), args[++i]);
      } else {
        usage("unexpected argument " + arg);
      }
    }
    if (!options.containsKey("bootstrap-servers") || !options.containsKey("ticket")) {
      usage("--bootstrap-servers and --ticket are required");
    }
    String prefix = options.getOrDefault("prefix", ApizeeConsumers.DEFAULT_PREFIX);
    String ticket = options.get("ticket");
    Duration timeout = Duration.ofMillis(Long.parseLong(options.getOrDefault("timeout-ms", "60000")));
    Properties props = consumerProperties(options, overrides);

    List<Entry> timeline = read(props, topicPattern(prefix), ticket, timeout);
    for (Entry entry : timeline) {
      System.out.println(options.containsKey("json") ? json(entry) : line(entry));
    }
    System.err.printf("ticket %s: %d events%n", ticket, timeline.size());
  }

  /**
   * The consumer's settings: the kit's ({@link ApizeeConsumers#properties}: read_committed,
   * auto.offset.reset=earliest, the generated classes), a group of its own that commits nothing,
   * {@code --schema-registry-url}, then every {@code --property} over them.
   */
  public static Properties consumerProperties(Map<String, String> options, Properties overrides) {
    Properties props =
        ApizeeConsumers.properties(
            options.get("bootstrap-servers"), "apizee-ticket-timeline-" + UUID.randomUUID());
    props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
    if (options.containsKey("schema-registry-url")) {
      props.put(ApizeeDeserializerConfig.SCHEMA_REGISTRY_URL, options.get("schema-registry-url"));
    }
    props.putAll(overrides);
    return props;
  }

  /** The category topics of the bridge: not its dlq (raw bytes) nor its bridge-state. */
  public static Pattern topicPattern(String prefix) {
    return ApizeeConsumers.topicPattern(prefix);
  }

  /** Every record keyed {@code ticket} on the topics, up to their end now, by occurredAt. */
  public static List<Entry> read(
      Properties props, Pattern topics, String ticket, Duration timeout) {
    List<Entry> timeline = new ArrayList<>();
    long deadline = System.nanoTime() + timeout.toNanos();
    try (KafkaConsumer<String, GenericRecord> consumer = new KafkaConsumer<>(props)) {
      consumer.subscribe(topics);
      while (System.nanoTime() < deadline) {
        var records = consumer.poll(Duration.ofMillis(500));
        for (ConsumerRecord<String, GenericRecord> record : records) {
          if (ticket.equals(record.key())) {
            timeline.add(new Entry(record));
          }
        }
        if (records.isEmpty() && caughtUp(consumer)) {
          break;
        }
      }
      if (System.nanoTime() >= deadline) {
        throw new IllegalStateException("not caught up with " + topics + " within " + timeout);
      }
    }
    timeline.sort(
        Comparator.comparingLong(Entry::occurredAt).thenComparingLong(Entry::eventId));
    return timeline;
  }

  private static boolean caughtUp(KafkaConsumer<String, GenericRecord> consumer) {
    Set<TopicPartition> assigned = consumer.assignment();
    if (assigned.isEmpty()) {
      return false;
    }
    Map<TopicPartition, Long> ends = consumer.endOffsets(assigned);
    return assigned.stream().allMatch(tp -> consumer.position(tp) >= ends.get(tp));
  }

  private static String line(Entry entry) {
    GenericRecord value = entry.record().value();
    StringBuilder out =
        new StringBuilder()
            .append(Instant.ofEpochMilli(entry.occurredAt()))
            .append(' ')
            .append(value.get("eventType"))
            .append(" id=")
            .append(value.get("eventId"))
            .append(" source=")
            .append(value.get("source"));
    ObjectNode fields = RecordJson.of(value);
    for (int i = 9; i < value.getSchema().getFields().size(); i++) {
      String name = value.getSchema().getFields().get(i).name();
      out.append(' ').append(name).append('=').append(RecordJson.text(fields.get(name)));
    }
    if (value.get("extra") != null) {
      out.append(" extra=").append(value.get("extra"));
    }
    return out.append("  (")
        .append(entry.record().topic())
        .append(" p")
        .append(entry.record().partition())
        .append('@')
        .append(entry.record().offset())
        .append(')')
        .toString();
  }

  private static String json(Entry entry) {
    ConsumerRecord<String, GenericRecord> record = entry.record();
    ObjectNode out = RecordJson.of(record.value()).objectNode();
    out.put("topic", record.topic());
    out.put("partition", record.partition());
    out.put("offset", record.offset());
    out.put("key", record.key());
    out.put("schema", record.value().getSchema().getFullName());
    out.put("class", record.value().getClass().getName());
    ObjectNode headers = out.putObject("headers");
    for (Header header : record.headers()) {
      headers.put(header.key(), new String(header.value(), StandardCharsets.UTF_8));
    }
    out.set("record", RecordJson.of(record.value()));
    return RecordJson.text(out);
  }

  private static void usage(String why) {
    System.err.println(why);
    System.err.println(
        "usage: TicketTimeline --bootstrap-servers HOST:PORT --ticket ID [--prefix P]"
            + " [--schema-registry-url URL] [--json] [--timeout-ms N] [--property k=v ...]");
    System.exit(2);
  }
}
