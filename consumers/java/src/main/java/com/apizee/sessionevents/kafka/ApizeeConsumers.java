package com.apizee.sessionevents.kafka;

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.regex.Pattern;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * What a {@code KafkaConsumer} of the bridge's topics needs: which topics, and the settings the
 * kit starts from.
 *
 * <pre>
 * Properties props = ApizeeConsumers.properties("kafka:9092", "my-team");
 * props.put("security.protocol", "SASL_SSL"); // yours go over the kit's
 * try (KafkaConsumer&lt;String, GenericRecord&gt; consumer = new KafkaConsumer&lt;&gt;(props)) {
 *   consumer.subscribe(ApizeeConsumers.topicPattern(prefix));
 *   ...
 * }
 * </pre>
 */
public final class ApizeeConsumers {
  /** The bridge's default {@code BRIDGE_KAFKA_TOPIC_PREFIX}. */
  public static final String DEFAULT_PREFIX = "apizee.session-events";

  /**
   * The kit's default isolation level: a record written in a Kafka transaction is read once the
   * transaction commits, never if it aborts. The bridge in its default (at-least-once) mode writes
   * without transactions, so this costs nothing there.
   */
  public static final String ISOLATION_LEVEL = "read_committed";

  /** Where a group without a committed offset starts: the oldest record Kafka keeps. */
  public static final String AUTO_OFFSET_RESET = "earliest";

  private ApizeeConsumers() {}

  /**
   * Consumer settings for the bridge's topics: {@code bootstrap.servers}, {@code group.id}, the
   * key as a String (the ticketId in decimal), the value through {@link ApizeeAvroDeserializer}
   * into the generated classes ({@code specific.avro.reader=true}), {@code
   * isolation.level=read_committed} and {@code auto.offset.reset=earliest}. Put your own settings
   * over them (security, {@code schema.registry.url} for a bridge in registry mode, ...).
   */
  public static Properties properties(String bootstrapServers, String groupId) {
    Properties props = new Properties();
    props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrapServers);
    props.put(ConsumerConfig.GROUP_ID_CONFIG, groupId);
    props.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, ISOLATION_LEVEL);
    props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, AUTO_OFFSET_RESET);
    props.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    props.put(
        ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ApizeeAvroDeserializer.class.getName());
    props.put(ApizeeDeserializerConfig.SPECIFIC_AVRO_READER, "true");
    return props;
  }

  /**
   * The topics holding Avro records under {@code prefix} (the bridge's {@code
   * BRIDGE_KAFKA_TOPIC_PREFIX}): one per category and {@code {prefix}.unknown}. Not {@code
   * {prefix}.dlq} (raw bodies that failed validation) nor {@code {prefix}.bridge-state}.
   */
  public static List<String> topics(String prefix) {
    List<String> topics = new ArrayList<>();
    for (String category : ApizeeSchemas.bundled().categories()) {
      topics.add(prefix + "." + category);
    }
    return List.copyOf(topics);
  }

  /** {@link #topics} as a pattern, for {@code subscribe(Pattern)}: topics created later join. */
  public static Pattern topicPattern(String prefix) {
    String categories = String.join("|", ApizeeSchemas.bundled().categories());
    return Pattern.compile(Pattern.quote(prefix) + "\\.(" + categories + ")");
  }
}
