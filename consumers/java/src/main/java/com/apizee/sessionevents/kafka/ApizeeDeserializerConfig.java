package com.apizee.sessionevents.kafka;

import java.util.List;
import java.util.Map;
import org.apache.kafka.common.config.AbstractConfig;
import org.apache.kafka.common.config.ConfigDef;
import org.apache.kafka.common.config.ConfigDef.Importance;
import org.apache.kafka.common.config.ConfigDef.Type;
import org.apache.kafka.common.config.ConfigDef.ValidString;

/**
 * The settings of {@link ApizeeAvroDeserializer}. The first four are the keys JVM teams already
 * set for Confluent's and Apicurio's Avro serdes; the {@code apizee.} ones are this kit's own.
 */
public final class ApizeeDeserializerConfig extends AbstractConfig {
  /** Comma-separated base URLs of a Confluent-compatible Schema Registry. */
  public static final String SCHEMA_REGISTRY_URL = "schema.registry.url";

  /** true: generated SpecificRecord classes (TicketNew, ...); false: GenericRecord. */
  public static final String SPECIFIC_AVRO_READER = "specific.avro.reader";

  /** USER_INFO (from basic.auth.user.info) or URL (user:password@ in the registry URL). */
  public static final String BASIC_AUTH_CREDENTIALS_SOURCE = "basic.auth.credentials.source";

  /** {@code user:password} for the registry's HTTP basic authentication. */
  public static final String BASIC_AUTH_USER_INFO = "basic.auth.user.info";

  /** Time limit of one registry request, milliseconds. */
  public static final String REGISTRY_REQUEST_TIMEOUT_MS = "apizee.registry.request.timeout.ms";

  /**
   * Extra writer schemas for single-object records: comma-separated .avsc files or folders of
   * them, e.g. the schemas of a bridge release newer than this kit.
   */
  public static final String WRITER_SCHEMAS = "apizee.writer.schemas";

  static final ConfigDef DEFINITION =
      new ConfigDef()
          .define(
              SCHEMA_REGISTRY_URL,
              Type.LIST,
              List.of(),
              Importance.HIGH,
              "Base URLs of a Confluent-compatible Schema Registry (Confluent, Apicurio's"
                  + " /apis/ccompat/v7, Karapace, Redpanda). Needed only for records in the"
                  + " Confluent wire format (the bridge in registry mode).")
          .define(
              SPECIFIC_AVRO_READER,
              Type.BOOLEAN,
              false,
              Importance.HIGH,
              "Return the generated SpecificRecord classes instead of GenericRecord.")
          .define(
              BASIC_AUTH_CREDENTIALS_SOURCE,
              Type.STRING,
              "USER_INFO",
              ValidString.in("USER_INFO", "URL"),
              Importance.MEDIUM,
              "Where the registry credentials come from: USER_INFO or URL.")
          .define(
              BASIC_AUTH_USER_INFO,
              Type.PASSWORD,
              null,
              Importance.MEDIUM,
              "user:password for the registry's HTTP basic authentication.")
          .define(
              REGISTRY_REQUEST_TIMEOUT_MS,
              Type.INT,
              10_000,
              ConfigDef.Range.atLeast(1),
              Importance.LOW,
              "Time limit of one registry request, in milliseconds.")
          .define(
              WRITER_SCHEMAS,
              Type.LIST,
              List.of(),
              Importance.LOW,
              "Extra writer schemas (.avsc files or folders) for single-object records.");

  public ApizeeDeserializerConfig(Map<?, ?> originals) {
    // No logging of the values: a consumer passes its whole configuration here.
    super(DEFINITION, originals, false);
  }
}
