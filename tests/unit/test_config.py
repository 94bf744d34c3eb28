"""Config loading: env mapping, TOML file, file secrets, validation messages, redaction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic_settings import EnvSettingsSource

from bridge.config import (
    CONFIG_FILE_ENV,
    REDACTED,
    TOPIC_PREFIX_MAX_CHARS,
    BridgeSettings,
    ConfigError,
    env_var_docs,
    load_settings,
    redacted_dump,
)

SECRET = "hunter2-do-not-print"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without any BRIDGE_ variable."""
    for name in list(os.environ):
        if name.upper().startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def set_env(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def config_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    set_env(monkeypatch, **env)
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    return str(excinfo.value)


def error_vars(message: str) -> set[str]:
    return {line.split(":", 1)[0] for line in message.splitlines()}


def test_defaults_load_with_an_auth_method(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, BRIDGE_AUTH_TOKEN=SECRET)
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.topic_prefix == "apizee.session-events"
    assert settings.kafka.enable_idempotence is True
    assert settings.kafka.compression_type == "none"
    assert settings.kafka.security_protocol == "PLAINTEXT"
    assert settings.ingress.port == 8080
    assert settings.ingress.path == "/webhooks/apizee"
    assert settings.ingress.max_body_bytes == 1024 * 1024
    assert settings.admin.port == 9090
    assert settings.auth.methods == ("token",)
    assert settings.auth.token is not None
    assert settings.auth.token.get_secret_value() == SECRET
    assert settings.auth.token_query_param == "token"
    assert settings.dedupe.window_seconds == 600
    assert settings.log.level == "INFO"
    assert settings.log.format == "json"


def test_single_underscore_env_names_reach_nested_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS="k1:9092,k2:9092",
        BRIDGE_KAFKA_LINGER_MS="20",
        BRIDGE_AUTH_HMAC_SECRET=SECRET,
        BRIDGE_AUTH_TIMESTAMP_TOLERANCE_SECONDS="60",
        BRIDGE_INGRESS_MAX_BODY_BYTES="2048",
        BRIDGE_DEDUPE_MAX_ENTRIES="10",
        BRIDGE_LOG_LEVEL="debug",
    )
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka.linger_ms == 20
    assert settings.auth.hmac_secret is not None
    assert settings.auth.hmac_secret.get_secret_value() == SECRET
    assert settings.auth.timestamp_tolerance_seconds == 60
    assert settings.ingress.max_body_bytes == 2048
    assert settings.dedupe.max_entries == 10
    assert settings.log.level == "DEBUG"


def test_blank_env_values_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        BRIDGE_AUTH_TOKEN="",
        BRIDGE_AUTH_HMAC_SECRET=SECRET,
        BRIDGE_AUTH_TOKEN_QUERY_PARAM="",
    )
    settings = load_settings()
    assert settings.auth.token is None
    assert settings.auth.token_query_param is None
    assert settings.auth.methods == ("hmac",)


def test_overrides_win_over_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, BRIDGE_AUTH_TOKEN=SECRET, BRIDGE_INGRESS_PORT="8081")
    settings = load_settings(ingress={"port": 0}, admin={"port": 0})
    assert settings.ingress.port == 0
    assert settings.auth.token is not None  # env still applies to the sections not overridden


def test_secret_from_file_strips_one_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n\n")
    sasl_file = tmp_path / "sasl"
    sasl_file.write_bytes(b"sasl-pass\r\n")  # written on Windows
    set_env(
        monkeypatch,
        BRIDGE_AUTH_TOKEN_FILE=str(token_file),
        BRIDGE_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
        BRIDGE_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        BRIDGE_KAFKA_SASL_USERNAME="bridge",
        BRIDGE_KAFKA_SASL_PASSWORD_FILE=str(sasl_file),
    )
    settings = load_settings()
    assert settings.auth.token is not None
    assert settings.auth.token.get_secret_value() == SECRET + "\n"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "sasl-pass"


def test_registry_mode_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    set_env(monkeypatch, BRIDGE_AUTH_TOKEN=SECRET)
    assert load_settings().schema.registry_url is None  # single-object encoding by default
    password = tmp_path / "registry-password"
    password.write_text("registry-" + SECRET + "\n")
    set_env(
        monkeypatch,
        BRIDGE_SCHEMA_REGISTRY_URL="https://registry.example.com/apis/ccompat/v7/",
        BRIDGE_SCHEMA_REGISTRY_USERNAME="bridge",
        BRIDGE_SCHEMA_REGISTRY_PASSWORD_FILE=str(password),
        BRIDGE_SCHEMA_SUBJECT_STRATEGY="record",
    )
    settings = load_settings()
    assert settings.schema.registry_url == "https://registry.example.com/apis/ccompat/v7"
    assert settings.schema.registry_password is not None
    assert settings.schema.registry_password.get_secret_value() == "registry-" + SECRET
    assert settings.schema.subject_strategy == "record"
    assert settings.schema.registry_timeout_seconds == 10.0
    dump = redacted_dump(settings)
    assert SECRET not in json.dumps(dump)
    assert dump["schema"]["registry_password"] == REDACTED


def test_secret_and_secret_file_together_is_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file")
    message = config_error(
        monkeypatch, BRIDGE_AUTH_TOKEN=SECRET, BRIDGE_AUTH_TOKEN_FILE=str(token_file)
    )
    assert error_vars(message) == {"BRIDGE_AUTH_TOKEN_FILE"}
    assert "BRIDGE_AUTH_TOKEN " in message  # names the other variable too
    assert SECRET not in message
    assert "from-file" not in message


def test_unreadable_secret_file_names_the_variable_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = config_error(monkeypatch, BRIDGE_AUTH_HMAC_SECRET_FILE=str(tmp_path / "absent"))
    assert error_vars(missing) == {"BRIDGE_AUTH_HMAC_SECRET_FILE"}

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    not_text = config_error(monkeypatch, BRIDGE_AUTH_HMAC_SECRET_FILE=str(binary))
    assert error_vars(not_text) == {"BRIDGE_AUTH_HMAC_SECRET_FILE"}
    assert SECRET not in not_text


def test_toml_file_with_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config_file = tmp_path / "bridge.toml"
    config_file.write_text(
        "[kafka]\n"
        'bootstrap_servers = "file-broker:9092"\n'
        "linger_ms = 50\n"
        "[auth]\n"
        'token = "file-token"\n'
        "[ingress]\n"
        "port = 8181\n"
    )
    set_env(
        monkeypatch,
        BRIDGE_CONFIG_FILE=str(config_file),
        BRIDGE_KAFKA_BOOTSTRAP_SERVERS="env-broker:9092",
    )
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "env-broker:9092"
    assert settings.kafka.linger_ms == 50  # the rest of the file's section survives
    assert settings.ingress.port == 8181
    assert settings.auth.token is not None
    assert settings.auth.token.get_secret_value() == "file-token"


def test_named_config_file_must_exist_and_parse(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    message = config_error(monkeypatch, BRIDGE_CONFIG_FILE=str(tmp_path / "absent.toml"))
    assert message.startswith(f"{CONFIG_FILE_ENV}:")

    broken = tmp_path / "broken.toml"
    broken.write_text("[kafka\nlinger_ms = ")
    message = config_error(monkeypatch, BRIDGE_CONFIG_FILE=str(broken), BRIDGE_AUTH_TOKEN="t")
    assert message.startswith(f"{CONFIG_FILE_ENV}: not valid TOML")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BRIDGE_INGRESS_PORT": "eighty"}, "BRIDGE_INGRESS_PORT"),
        ({"BRIDGE_INGRESS_PORT": "70000"}, "BRIDGE_INGRESS_PORT"),
        ({"BRIDGE_INGRESS_PATH": "webhooks"}, "BRIDGE_INGRESS_PATH"),
        ({"BRIDGE_INGRESS_WORKERS": "0"}, "BRIDGE_INGRESS_WORKERS"),
        ({"BRIDGE_KAFKA_TOPIC_PREFIX": "apizee events"}, "BRIDGE_KAFKA_TOPIC_PREFIX"),
        (
            {"BRIDGE_KAFKA_TOPIC_PREFIX": "a" * (TOPIC_PREFIX_MAX_CHARS + 1)},
            "BRIDGE_KAFKA_TOPIC_PREFIX",
        ),
        ({"BRIDGE_KAFKA_COMPRESSION_TYPE": "brotli"}, "BRIDGE_KAFKA_COMPRESSION_TYPE"),
        ({"BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "BRIDGE_KAFKA_SASL_MECHANISM"),
        (
            {
                "BRIDGE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "BRIDGE_KAFKA_SASL_MECHANISM": "PLAIN",
                "BRIDGE_KAFKA_SASL_USERNAME": "bridge",
            },
            "BRIDGE_KAFKA_SASL_PASSWORD",
        ),
        (
            {"BRIDGE_KAFKA_SECURITY_PROTOCOL": "SSL", "BRIDGE_KAFKA_SSL_CAFILE": "/nope/ca.pem"},
            "BRIDGE_KAFKA_SSL_CAFILE",
        ),
        ({"BRIDGE_KAFKA_SASL_USERNAME": "bridge"}, "BRIDGE_KAFKA_SASL_USERNAME"),
        ({"BRIDGE_KAFKA_BOOTSTRAP_SERVER": "typo:9092"}, "BRIDGE_KAFKA_BOOTSTRAP_SERVER"),
        ({"BRIDGE_ADMIN_PORT": "8080"}, "BRIDGE_ADMIN_PORT"),
        (
            {"BRIDGE_INGRESS_REQUEST_TIMEOUT_SECONDS": "5"},
            "BRIDGE_INGRESS_REQUEST_TIMEOUT_SECONDS",
        ),
        ({"BRIDGE_AUTH_HMAC_ENCODING": "base32"}, "BRIDGE_AUTH_HMAC_ENCODING"),
        ({"BRIDGE_AUTH_BASIC_USERNAME": "apizee"}, "BRIDGE_AUTH_BASIC_PASSWORD"),
        ({"BRIDGE_LOG_LEVEL": "verbose"}, "BRIDGE_LOG_LEVEL"),
        ({"BRIDGE_DEDUPE_WINDOW_SECONDS": "-1"}, "BRIDGE_DEDUPE_WINDOW_SECONDS"),
        ({"BRIDGE_SCHEMA_REGISTRY_URL": "registry:8081"}, "BRIDGE_SCHEMA_REGISTRY_URL"),
        (
            {"BRIDGE_SCHEMA_REGISTRY_URL": f"https://bridge:{SECRET}@registry"},
            "BRIDGE_SCHEMA_REGISTRY_URL",
        ),
        (
            {"BRIDGE_SCHEMA_REGISTRY_URL": "https://r", "BRIDGE_SCHEMA_REGISTRY_USERNAME": "b"},
            "BRIDGE_SCHEMA_REGISTRY_PASSWORD",
        ),
        ({"BRIDGE_SCHEMA_REGISTRY_USERNAME": "b"}, "BRIDGE_SCHEMA_REGISTRY_PASSWORD"),
        (
            {"BRIDGE_SCHEMA_REGISTRY_USERNAME": "b", "BRIDGE_SCHEMA_REGISTRY_PASSWORD": "p"},
            "BRIDGE_SCHEMA_REGISTRY_USERNAME",
        ),
        ({"BRIDGE_SCHEMA_SUBJECT_STRATEGY": "topic"}, "BRIDGE_SCHEMA_SUBJECT_STRATEGY"),
        ({"BRIDGE_SCHEMA_REGISTRY_TIMEOUT_SECONDS": "0"}, "BRIDGE_SCHEMA_REGISTRY_TIMEOUT_SECONDS"),
    ],
)
def test_validation_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], variable: str
) -> None:
    message = config_error(monkeypatch, BRIDGE_AUTH_TOKEN=SECRET, **env)
    assert error_vars(message) == {variable}, message
    assert SECRET not in message


def test_port_message_matches_the_documented_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch, BRIDGE_AUTH_TOKEN=SECRET, BRIDGE_INGRESS_PORT="x")
    assert message.startswith("BRIDGE_INGRESS_PORT: Input should be a valid integer")


def test_one_line_per_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        monkeypatch,
        BRIDGE_AUTH_TOKEN=SECRET,
        BRIDGE_INGRESS_PORT="x",
        BRIDGE_KAFKA_LINGER_MS="soon",
        BRIDGE_LOG_FORMAT="xml",
    )
    assert error_vars(message) == {
        "BRIDGE_INGRESS_PORT",
        "BRIDGE_KAFKA_LINGER_MS",
        "BRIDGE_LOG_FORMAT",
    }


def test_same_port_on_distinct_addresses_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        BRIDGE_AUTH_TOKEN=SECRET,
        BRIDGE_INGRESS_HOST="127.0.0.1",
        BRIDGE_ADMIN_HOST="10.0.0.5",
        BRIDGE_ADMIN_PORT="8080",
    )
    assert load_settings().admin.port == 8080


def test_secret_values_never_reach_error_text(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # pydantic's own message would quote input_value=['hunter2...']; ours must not.
    config_file = tmp_path / "bridge.toml"
    config_file.write_text(f'[auth]\ntoken = ["{SECRET}"]\n[kafka]\nsasl_password = "{SECRET}"\n')
    set_env(monkeypatch, BRIDGE_CONFIG_FILE=str(config_file))
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert error_vars(str(excinfo.value)) >= {"BRIDGE_AUTH_TOKEN", "BRIDGE_KAFKA_SASL_PASSWORD"}
    assert SECRET not in str(excinfo.value)
    assert SECRET not in repr(excinfo.value)
    assert excinfo.value.__cause__ is None  # the ValidationError (which quotes it) is dropped


def test_redacted_dump_hides_every_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_password = tmp_path / "key-password"
    key_password.write_text("key-" + SECRET)
    set_env(
        monkeypatch,
        BRIDGE_AUTH_TOKEN="token-" + SECRET,
        BRIDGE_AUTH_HMAC_SECRET="hmac-" + SECRET,
        BRIDGE_AUTH_BASIC_USERNAME="apizee",
        BRIDGE_AUTH_BASIC_PASSWORD="basic-" + SECRET,
        BRIDGE_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        BRIDGE_KAFKA_SASL_MECHANISM="PLAIN",
        BRIDGE_KAFKA_SASL_USERNAME="bridge",
        BRIDGE_KAFKA_SASL_PASSWORD="sasl-" + SECRET,
        BRIDGE_KAFKA_SSL_KEY_PASSWORD_FILE=str(key_password),
    )
    dump = redacted_dump(load_settings())
    assert SECRET not in json.dumps(dump)
    assert dump["auth"]["token"] == REDACTED
    assert dump["auth"]["hmac_secret"] == REDACTED
    assert dump["auth"]["basic_password"] == REDACTED
    assert dump["auth"]["basic_username"] == "apizee"
    assert dump["kafka"]["sasl_password"] == REDACTED
    assert dump["kafka"]["ssl_key_password"] == REDACTED
    assert dump["kafka"]["ssl_key_password_file"] == str(key_password)
    assert dump["kafka"]["bootstrap_servers"] == "localhost:9092"


def test_redacted_dump_shows_unset_secrets_as_null(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, BRIDGE_AUTH_TOKEN=SECRET)
    dump = redacted_dump(load_settings())
    assert dump["auth"]["hmac_secret"] is None
    assert dump["kafka"]["sasl_password"] is None
    assert dump["auth"]["token"] == REDACTED


def test_refuses_to_start_without_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(monkeypatch)
    assert error_vars(message) == {"BRIDGE_AUTH_*"}
    for hint in (
        "BRIDGE_AUTH_HMAC_SECRET",
        "BRIDGE_AUTH_TOKEN",
        "BRIDGE_AUTH_BASIC_USERNAME",
        "BRIDGE_AUTH_BASIC_PASSWORD",
        "BRIDGE_AUTH_INSECURE_NO_AUTH=true",
    ):
        assert hint in message


def test_insecure_flag_allows_no_authentication(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, BRIDGE_AUTH_INSECURE_NO_AUTH="true")
    settings = load_settings()
    assert settings.auth.insecure_no_auth is True
    assert settings.auth.methods == ()


def test_commands_that_serve_no_webhooks_need_no_auth_method(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, BRIDGE_KAFKA_BOOTSTRAP_SERVERS="kafka:9092")
    settings = load_settings(require_webhook_auth=False)
    assert settings.auth.methods == ()
    assert settings.auth.insecure_no_auth is False
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    # Only that one requirement is lifted, and only for that call.
    with pytest.raises(ConfigError, match="no webhook authentication configured"):
        load_settings()
    message = config_error(monkeypatch, BRIDGE_AUTH_BASIC_USERNAME="apizee")
    assert error_vars(message) == {"BRIDGE_AUTH_BASIC_PASSWORD"}
    with pytest.raises(ConfigError, match="BRIDGE_AUTH_BASIC_PASSWORD: set both"):
        load_settings(require_webhook_auth=False)


def test_insecure_flag_with_a_method_is_contradictory(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        monkeypatch, BRIDGE_AUTH_INSECURE_NO_AUTH="true", BRIDGE_AUTH_TOKEN=SECRET
    )
    assert error_vars(message) == {"BRIDGE_AUTH_INSECURE_NO_AUTH"}


def test_env_var_docs_cover_every_field_with_a_description() -> None:
    rows = env_var_docs()
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names))
    assert all(description for _, _, description in rows)
    by_name = {name: default for name, default, _ in rows}
    assert by_name["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"] == "localhost:9092"
    assert by_name["BRIDGE_KAFKA_ENABLE_IDEMPOTENCE"] == "true"
    assert by_name["BRIDGE_AUTH_TOKEN"] == "unset"
    assert by_name["BRIDGE_AUTH_HMAC_PREFIX"] == '""'
    assert by_name["BRIDGE_INGRESS_MAX_BODY_BYTES"] == "1048576"
    assert CONFIG_FILE_ENV in by_name
    expected = {
        f"BRIDGE_{section}_{field}".upper()
        for section, info in BridgeSettings.model_fields.items()
        for field in info.annotation.model_fields  # type: ignore[union-attr]
    }
    assert set(names) - {CONFIG_FILE_ENV} == expected
    assert {"BRIDGE_AUTH_TOKEN_FILE", "BRIDGE_KAFKA_SASL_PASSWORD_FILE"} <= expected


def test_every_documented_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A documented name that the env source did not map would be silently ignored.
    for name, _, _ in env_var_docs():
        if name != CONFIG_FILE_ENV:
            monkeypatch.setenv(name, "value-of-" + name)
    read = EnvSettingsSource(BridgeSettings)()
    for name, _, _ in env_var_docs():
        if name == CONFIG_FILE_ENV:
            continue
        section, field = name.removeprefix("BRIDGE_").lower().split("_", 1)
        assert read[section][field] == "value-of-" + name


def test_message_bytes_default_to_the_body_limit_plus_headroom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_env(monkeypatch, BRIDGE_AUTH_TOKEN="t", BRIDGE_INGRESS_MAX_BODY_BYTES="2000000")
    settings = load_settings()
    assert settings.kafka.message_bytes(settings.ingress.max_body_bytes) == 2000000 + 65536


def test_message_bytes_too_small_for_a_dead_letter_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = config_error(
        monkeypatch, BRIDGE_AUTH_TOKEN="t", BRIDGE_KAFKA_MAX_MESSAGE_BYTES="1048588"
    )
    assert message.startswith("BRIDGE_KAFKA_MAX_MESSAGE_BYTES: must be at least 1052672"), message


def test_a_budget_below_one_body_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    message = config_error(
        monkeypatch, BRIDGE_AUTH_TOKEN="t", BRIDGE_INGRESS_MAX_BODY_BYTES_IN_FLIGHT="1000"
    )
    assert message.startswith("BRIDGE_INGRESS_MAX_BODY_BYTES_IN_FLIGHT: must be at least"), message


@pytest.mark.parametrize(
    ("setting", "expected"), [("none", None), ("lz4", "lz4"), ("zstd", "zstd")]
)
def test_producer_settings_are_one_mapping_for_every_producer(
    monkeypatch: pytest.MonkeyPatch, setting: str, expected: str | None
) -> None:
    """The publisher's producer and each exactly_once owner's transactional producer take
    their settings from producer_kwargs(): a producer setting cannot reach one and miss the
    other, and "none" is aiokafka's None."""
    from bridge import publisher

    set_env(
        monkeypatch,
        BRIDGE_AUTH_TOKEN=SECRET,
        BRIDGE_KAFKA_COMPRESSION_TYPE=setting,
        BRIDGE_KAFKA_LINGER_MS="7",
        BRIDGE_KAFKA_MAX_BATCH_SIZE="65536",
    )
    kafka = load_settings().kafka
    kwargs = publisher.producer_kwargs(kafka, 123_456)
    assert kwargs["acks"] == "all"
    assert kwargs["compression_type"] == expected
    assert kwargs["linger_ms"] == 7
    assert kwargs["max_batch_size"] == 65536
    assert kwargs["max_request_size"] == 123_456
    assert kwargs["bootstrap_servers"] == kafka.bootstrap_servers
