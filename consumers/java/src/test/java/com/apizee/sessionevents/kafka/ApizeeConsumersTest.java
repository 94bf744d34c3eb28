package com.apizee.sessionevents.kafka;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.apizee.sessionevents.kafka.examples.TicketTimeline;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.regex.Pattern;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.junit.jupiter.api.Test;

/** The consumer settings the kit starts from, and the bridge's topics under any prefix. */
class ApizeeConsumersTest {
  private static final List<String> CATEGORIES =
      List.of("consent", "geo", "media", "mediaDevice", "session", "survey", "ticket", "unknown");

  @Test
  void theKitReadsCommittedRecordsFromTheEarliestByDefault() {
    Properties props = ApizeeConsumers.properties("kafka:9092", "my-team");
    assertEquals("read_committed", props.get(ConsumerConfig.ISOLATION_LEVEL_CONFIG));
    assertEquals("earliest", props.get(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG));
    assertEquals("kafka:9092", props.get(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG));
    assertEquals("my-team", props.get(ConsumerConfig.GROUP_ID_CONFIG));
    assertEquals(
        ApizeeAvroDeserializer.class.getName(),
        props.get(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG));
    assertEquals("true", props.get(ApizeeDeserializerConfig.SPECIFIC_AVRO_READER));
    // Kafka's own default is read_uncommitted: the kit's is a choice, and Kafka accepts it.
    assertEquals(
        "read_uncommitted",
        ConsumerConfig.configDef().defaultValues().get(ConsumerConfig.ISOLATION_LEVEL_CONFIG));
    ConsumerConfig.configDef().parse(props);
  }

  @Test
  void theExampleUsesTheKitDefaultsAndItsPropertiesGoOverThem() {
    Map<String, String> options = Map.of("bootstrap-servers", "kafka:9092");
    Properties defaults = TicketTimeline.consumerProperties(options, new Properties());
    assertEquals("read_committed", defaults.get(ConsumerConfig.ISOLATION_LEVEL_CONFIG));
    assertEquals("earliest", defaults.get(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG));
    assertEquals("false", defaults.get(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG));

    Properties overrides = new Properties();
    overrides.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_uncommitted");
    overrides.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "latest");
    Properties props = TicketTimeline.consumerProperties(options, overrides);
    assertEquals("read_uncommitted", props.get(ConsumerConfig.ISOLATION_LEVEL_CONFIG));
    assertEquals("latest", props.get(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG));
  }

  @Test
  void theTopicsFollowThePrefix() {
    for (String prefix : List.of(ApizeeConsumers.DEFAULT_PREFIX, "staging.events", "a+b")) {
      List<String> topics = CATEGORIES.stream().map(c -> prefix + "." + c).toList();
      assertEquals(topics, ApizeeConsumers.topics(prefix));
      Pattern pattern = ApizeeConsumers.topicPattern(prefix);
      for (String topic : topics) {
        assertTrue(pattern.matcher(topic).matches(), topic);
      }
      for (String other : List.of(prefix + ".dlq", prefix + ".bridge-state", prefix + ".ticketx")) {
        assertFalse(pattern.matcher(other).matches(), other);
      }
    }
    // The prefix is literal: its dots and other regex characters match only themselves.
    assertFalse(ApizeeConsumers.topicPattern("staging.events").matcher("stagingXevents.ticket").matches());
    assertFalse(ApizeeConsumers.topicPattern("a+b").matcher("aab.ticket").matches());
  }
}
