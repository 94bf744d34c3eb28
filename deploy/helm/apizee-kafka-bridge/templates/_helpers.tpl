{{/* Names and labels. */}}

{{- define "apizee-kafka-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; 57 characters leave room for the "-admin" suffix. */}}
{{- define "apizee-kafka-bridge.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 57 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "apizee-kafka-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "apizee-kafka-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "apizee-kafka-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "apizee-kafka-bridge.labels" -}}
helm.sh/chart: {{ include "apizee-kafka-bridge.chart" . }}
{{ include "apizee-kafka-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ include "apizee-kafka-bridge.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: apizee-kafka-bridge
{{- end }}

{{- define "apizee-kafka-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "apizee-kafka-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "apizee-kafka-bridge.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "apizee-kafka-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "apizee-kafka-bridge.imageTag" .) }}
{{- end }}
{{- end }}

{{/* Secrets: each one a file in the secrets volume, passed to the bridge as a *_FILE variable. */}}

{{- define "apizee-kafka-bridge.secretSpecs" -}}
apizeeToken: {key: apizee-token, env: BRIDGE_APIZEE_TOKEN_FILE}
authToken: {key: auth-token, env: BRIDGE_AUTH_TOKEN_FILE}
authHmacSecret: {key: auth-hmac-secret, env: BRIDGE_AUTH_HMAC_SECRET_FILE}
authBasicPassword: {key: auth-basic-password, env: BRIDGE_AUTH_BASIC_PASSWORD_FILE}
kafkaSaslPassword: {key: kafka-sasl-password, env: BRIDGE_KAFKA_SASL_PASSWORD_FILE}
kafkaSslKeyPassword: {key: kafka-ssl-key-password, env: BRIDGE_KAFKA_SSL_KEY_PASSWORD_FILE}
schemaRegistryPassword: {key: schema-registry-password, env: BRIDGE_SCHEMA_REGISTRY_PASSWORD_FILE}
{{- end }}

{{- define "apizee-kafka-bridge.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "apizee-kafka-bridge.fullname" .) }}
{{- end }}

{{/* True (non-empty) when no webhook authentication is configured: the chart generates a token. */}}
{{- define "apizee-kafka-bridge.generateAuthToken" -}}
{{- $s := .Values.secrets }}
{{- $auth := .Values.config.auth | default dict }}
{{- if and (not $s.existingSecret) (not $s.authToken) (not $s.authHmacSecret) (not $s.authBasicPassword) (not $auth.insecure_no_auth) }}true{{ end }}
{{- end }}

{{/* The secrets in use, as YAML: name -> {key (in the Secret), env, file}. */}}
{{- define "apizee-kafka-bridge.usedSecrets" -}}
{{- $specs := include "apizee-kafka-bridge.secretSpecs" . | fromYaml }}
{{- $s := .Values.secrets }}
{{- $generate := include "apizee-kafka-bridge.generateAuthToken" . }}
{{- range $name := keys $specs | sortAlpha }}
{{- $spec := get $specs $name }}
{{- $key := "" }}
{{- if $s.existingSecret }}
{{- $key = get $s.existingSecretKeys $name }}
{{- else if or (get $s $name) (and $generate (eq $name "authToken")) }}
{{- $key = $spec.key }}
{{- end }}
{{- if $key }}
{{ $name }}:
  key: {{ $key | quote }}
  env: {{ $spec.env }}
  file: {{ $spec.key }}
{{- end }}
{{- end }}
{{- end }}

{{/* The bridge's environment: the ConfigMap, the secret files, extraEnv. Shared by the
Deployment and the `helm test` Pod, so that `apizee-bridge check` sees what the bridge sees. */}}
{{- define "apizee-kafka-bridge.containerEnv" -}}
{{- $used := include "apizee-kafka-bridge.usedSecrets" . | fromYaml -}}
envFrom:
  - configMapRef:
      name: {{ include "apizee-kafka-bridge.fullname" . }}
{{- if or $used .Values.extraEnv }}
env:
  {{- range $name, $spec := $used }}
  - name: {{ $spec.env }}
    value: /etc/apizee-kafka-bridge/secrets/{{ $spec.file }}
  {{- end }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- end }}

{{/* Mounts of the secret files and the Kafka and registry TLS files (list items; may be
empty). */}}
{{- define "apizee-kafka-bridge.secretVolumeMounts" -}}
{{- $used := include "apizee-kafka-bridge.usedSecrets" . | fromYaml -}}
{{- if $used }}
- name: secrets
  mountPath: /etc/apizee-kafka-bridge/secrets
  readOnly: true
{{- end }}
{{- if .Values.kafkaTls.existingSecret }}
- name: kafka-tls
  mountPath: /etc/apizee-kafka-bridge/kafka-tls
  readOnly: true
{{- end }}
{{- if .Values.schemaRegistryTls.existingSecret }}
- name: schema-registry-tls
  mountPath: /etc/apizee-kafka-bridge/schema-registry-tls
  readOnly: true
{{- end }}
{{- end }}

{{/* The volumes of those mounts (list items; may be empty). */}}
{{- define "apizee-kafka-bridge.secretVolumes" -}}
{{- $used := include "apizee-kafka-bridge.usedSecrets" . | fromYaml -}}
{{- if $used }}
- name: secrets
  secret:
    secretName: {{ include "apizee-kafka-bridge.secretName" . }}
    defaultMode: 0440
    items:
      {{- range $name, $spec := $used }}
      - key: {{ $spec.key }}
        path: {{ $spec.file }}
      {{- end }}
{{- end }}
{{- if .Values.kafkaTls.existingSecret }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafkaTls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- if .Values.schemaRegistryTls.existingSecret }}
- name: schema-registry-tls
  secret:
    secretName: {{ .Values.schemaRegistryTls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* Labels of the `helm test` Pod: the release's, but a name the Services, the
PodDisruptionBudget and the NetworkPolicy do not select (it serves nothing). */}}
{{- define "apizee-kafka-bridge.checkLabels" -}}
helm.sh/chart: {{ include "apizee-kafka-bridge.chart" . }}
app.kubernetes.io/name: {{ include "apizee-kafka-bridge.name" . }}-check
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: check
app.kubernetes.io/version: {{ include "apizee-kafka-bridge.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: apizee-kafka-bridge
{{- end }}

{{- define "apizee-kafka-bridge.pollingEnabled" -}}
{{- $apizee := .Values.config.apizee | default dict }}
{{- $poller := .Values.config.poller | default dict }}
{{- if and $apizee.base_url (ne (toString (get $poller "enabled")) "false") }}true{{ end }}
{{- end }}

{{/* One config value as the bridge reads it from the environment. YAML numbers arrive as
floats: print whole ones without an exponent (1000000, not 1e+06). */}}
{{- define "apizee-kafka-bridge.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq (floor .) . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "map" .) (kindIs "slice" .) }}
{{- fail (printf "config: %v is not a single value" .) }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Render-time checks of combinations the schema cannot express. */}}
{{- define "apizee-kafka-bridge.validate" -}}
{{- $used := include "apizee-kafka-bridge.usedSecrets" . | fromYaml }}
{{- $cfg := .Values.config }}
{{- $ingress := $cfg.ingress | default dict }}
{{- $grace := $ingress.shutdown_grace_seconds | default 20 | float64 }}
{{- $budget := add1 (add (int .Values.lifecycle.preStopSleepSeconds) (ceil $grace | int)) }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $budget) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed lifecycle.preStopSleepSeconds (%v) + config.ingress.shutdown_grace_seconds (%v), or in-flight webhooks are killed" .Values.terminationGracePeriodSeconds .Values.lifecycle.preStopSleepSeconds $grace) }}
{{- end }}
{{- $apizee := $cfg.apizee | default dict }}
{{- if and $apizee.base_url (not (hasKey $used "apizeeToken")) }}
{{- fail "config.apizee.base_url is set: set secrets.apizeeToken (or secrets.existingSecretKeys.apizeeToken)" }}
{{- end }}
{{- $auth := $cfg.auth | default dict }}
{{- if and (hasKey $used "authBasicPassword") (not $auth.basic_username) }}
{{- fail "a basic-auth password is set: set config.auth.basic_username too" }}
{{- end }}
{{- $authUsed := or (hasKey $used "authToken") (hasKey $used "authHmacSecret") (hasKey $used "authBasicPassword") }}
{{- if and (not $authUsed) (not $auth.insecure_no_auth) }}
{{- fail "no webhook authentication: name the keys of secrets.existingSecret that hold authToken, authHmacSecret or authBasicPassword in secrets.existingSecretKeys" }}
{{- end }}
{{- $schema := $cfg.schema | default dict }}
{{- if and (hasKey $used "schemaRegistryPassword") (not $schema.registry_username) }}
{{- fail "a Schema Registry password is set: set config.schema.registry_username too" }}
{{- end }}
{{- if and $schema.registry_username (not (hasKey $used "schemaRegistryPassword")) }}
{{- fail "config.schema.registry_username is set: set secrets.schemaRegistryPassword (or secrets.existingSecretKeys.schemaRegistryPassword)" }}
{{- end }}
{{- if and (or $schema.registry_username .Values.schemaRegistryTls.existingSecret) (not $schema.registry_url) }}
{{- fail "Schema Registry credentials or CA are set: set config.schema.registry_url too" }}
{{- end }}
{{- $kafka := $cfg.kafka | default dict }}
{{- if and (hasPrefix "SASL_" (toString $kafka.security_protocol)) (not (hasKey $used "kafkaSaslPassword")) }}
{{- fail (printf "config.kafka.security_protocol is %s: set secrets.kafkaSaslPassword (or secrets.existingSecretKeys.kafkaSaslPassword)" $kafka.security_protocol) }}
{{- end }}
{{- end }}

{{/* PromQL matchers of this release's series (alerts). */}}
{{- define "apizee-kafka-bridge.alertSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "job=\"%s-admin\",namespace=\"%s\"" (include "apizee-kafka-bridge.fullname" .) .Release.Namespace) }}
{{- end }}
