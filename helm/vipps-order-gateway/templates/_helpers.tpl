{{/* Name of the chart, or nameOverride. */}}
{{- define "vog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release already holds the chart name. */}}
{{- define "vog.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vog.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vog.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vog.labels" -}}
helm.sh/chart: {{ include "vog.chart" . }}
{{ include "vog.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vog.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vog.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding one merchant's two secrets. */}}
{{- define "vog.merchantSecretName" -}}
{{- if .merchant.existingSecret }}
{{- .merchant.existingSecret }}
{{- else }}
{{- printf "%s-merchant-%s" (include "vog.fullname" .root) .merchant.msn | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* Where the caller-auth key Secret is mounted (a directory, no subPath). */}}
{{- define "vog.authMountPath" -}}
/etc/vipps-order-gateway/auth
{{- end }}

{{/* The one key source of gateway.auth.jwt: hs256Secret, publicKey or jwks. */}}
{{- define "vog.authKeyKind" -}}
{{- $jwt := required "gateway.auth.jwt is required when gateway.auth.mode is jwt" .Values.gateway.auth.jwt }}
{{- $set := list }}
{{- range list "hs256Secret" "publicKey" "jwks" }}
{{- if hasKey $jwt . }}
{{- $set = append $set . }}
{{- end }}
{{- end }}
{{- if ne (len $set) 1 }}
{{- fail "gateway.auth.jwt: give exactly one of hs256Secret, publicKey and jwks" }}
{{- end }}
{{- first $set }}
{{- end }}

{{/* File name of the key in the mounted directory (and its key in a chart-made Secret). */}}
{{- define "vog.authKeyFileName" -}}
{{- get (dict "hs256Secret" "hs256_secret" "publicKey" "public_key.pem" "jwks" "jwks.json") (include "vog.authKeyKind" .) }}
{{- end }}

{{/* Name of the Secret holding the caller-auth key. */}}
{{- define "vog.authSecretName" -}}
{{- $src := index .Values.gateway.auth.jwt (include "vog.authKeyKind" .) }}
{{- if $src.existingSecret }}
{{- $src.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "vog.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* terminationGracePeriodSeconds: pre-stop sleep + drain + margin. */}}
{{- define "vog.terminationGracePeriodSeconds" -}}
{{- add .Values.gateway.preStopSleepSeconds .Values.gateway.shutdownGraceSeconds .Values.gateway.terminationMarginSeconds }}
{{- end }}

{{/* Checks the schema cannot express; called from the ConfigMap. */}}
{{- define "vog.validate" -}}
{{- $seen := dict }}
{{- range .Values.merchants }}
{{- if hasKey $seen .msn }}
{{- fail (printf "merchants: msn %s is listed twice" .msn) }}
{{- end }}
{{- $_ := set $seen .msn true }}
{{- end }}
{{- $np := .Values.networkPolicy }}
{{- if and $np.enabled (not (or $np.ingress.fromSameNamespace $np.ingress.controllerNamespaceSelector)) }}
{{- fail "networkPolicy.ingress: allow at least the namespace or the ingress controller, or no caller reaches the gateway" }}
{{- end }}
{{- if and $np.enabled (include "vog.outboxPostgres" .) }}
{{- $db := $np.egress.outboxDatabase }}
{{- if not (or $db.cidrs (kindIs "map" $db.namespaceSelector) (kindIs "map" $db.podSelector)) }}
{{- fail "networkPolicy.egress.outboxDatabase: the outbox is on PostgreSQL and the NetworkPolicy is on, so give the database's cidrs, or its namespaceSelector and/or podSelector; otherwise the pods cannot reach it and every asynchronous request is a 503" }}
{{- end }}
{{- end }}
{{- if and $np.enabled .Values.gateway.telemetry.otlpEndpoint }}
{{- $otlp := $np.egress.otlp }}
{{- if not (or $otlp.cidrs (kindIs "map" $otlp.namespaceSelector) (kindIs "map" $otlp.podSelector)) }}
{{- fail "networkPolicy.egress.otlp: spans are exported (gateway.telemetry.otlpEndpoint) and the NetworkPolicy is on, so give the receiver's cidrs, or its namespaceSelector and/or podSelector; otherwise every span is dropped" }}
{{- end }}
{{- end }}
{{- with .Values.gateway.telemetry.otlpEndpoint }}
{{- if not (regexMatch "^https?://[^/?#]+(/[^?#]*)?$" .) }}
{{- fail "gateway.telemetry.otlpEndpoint must be an http:// or https:// URL such as http://otel-collector:4318" }}
{{- end }}
{{- end }}
{{- if eq .Values.gateway.auth.mode "jwt" }}
{{- $_ := include "vog.authKeyKind" . }}
{{- end }}
{{- if and .Values.simulator.enabled (eq .Values.environment "production") }}
{{- fail "simulator.enabled is refused with environment: production. The simulator is a test double: its control API and receipt pages have no authentication, it accepts fixture credentials, and it keeps receipts in memory only. Deploy it to a staging release, or set simulator.enabled to false" }}
{{- end }}
{{- if and .Values.simulator.asUpstream (not .Values.simulator.enabled) }}
{{- fail "simulator.asUpstream points the gateway at the simulator's Service, which simulator.enabled deploys: turn simulator.enabled on, or asUpstream off" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is greater than autoscaling.maxReplicas" }}
{{- end }}
{{- end }}

{{/* Where the outbox's SQLite file lives: the PersistentVolumeClaim's mount. */}}
{{- define "vog.outboxDataPath" -}}
/var/lib/vipps-order-gateway
{{- end }}

{{/* Where the outbox's PostgreSQL password is mounted (a Secret, as a directory). */}}
{{- define "vog.outboxPasswordPath" -}}
/etc/vipps-order-gateway/outbox
{{- end }}

{{/* Whether the outbox keeps its entries in SQLite on the chart's PersistentVolumeClaim. */}}
{{- define "vog.outboxSqlite" -}}
{{- if and .Values.gateway.outbox.enabled (eq .Values.gateway.outbox.store "sqlite") }}true{{ end }}
{{- end }}

{{/* Whether the outbox keeps its entries in PostgreSQL. */}}
{{- define "vog.outboxPostgres" -}}
{{- if and .Values.gateway.outbox.enabled (eq .Values.gateway.outbox.store "postgres") }}true{{ end }}
{{- end }}

{{/* The port the NetworkPolicy opens to the outbox's database:
networkPolicy.egress.outboxDatabase.port, else the port of
gateway.outbox.postgres.url (postgres://USER@HOST:PORT/DB), else 5432. */}}
{{- define "vog.outboxDatabasePort" -}}
{{- $db := .Values.networkPolicy.egress.outboxDatabase }}
{{- if $db.port }}
{{- int $db.port }}
{{- else }}
{{- $url := required "gateway.outbox.postgres.url is required with store postgres" .Values.gateway.outbox.postgres.url }}
{{- $hostport := regexReplaceAll "^[a-z]+://[^@/]*@([^/]*)/.*$" $url "${1}" }}
{{- $port := regexFind ":[0-9]+$" $hostport | trimPrefix ":" }}
{{- $port | default "5432" }}
{{- end }}
{{- end }}

{{/* Where the OTLP headers file is mounted (a Secret, as a directory). */}}
{{- define "vog.otlpHeadersPath" -}}
/etc/vipps-order-gateway/otlp
{{- end }}

{{/* The port the NetworkPolicy opens to the OTLP receiver:
networkPolicy.egress.otlp.port, else the port of
gateway.telemetry.otlpEndpoint, else 443 for https and 4318 for http. */}}
{{- define "vog.otlpPort" -}}
{{- $otlp := .Values.networkPolicy.egress.otlp }}
{{- if $otlp.port }}
{{- int $otlp.port }}
{{- else }}
{{- $url := .Values.gateway.telemetry.otlpEndpoint }}
{{- $hostport := regexReplaceAll "^[a-z]+://([^/?#]*).*$" $url "${1}" }}
{{- $port := regexFind ":[0-9]+$" $hostport | trimPrefix ":" }}
{{- $port | default (ternary "443" "4318" (hasPrefix "https:" $url)) }}
{{- end }}
{{- end }}

{{/* The simulator's name: <fullname>-simulator. */}}
{{- define "vog.simulatorFullname" -}}
{{- printf "%s-simulator" (include "vog.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/* The simulator pods' labels: a name of their own, so neither the
gateway's Service, PodDisruptionBudget nor NetworkPolicy selects them. */}}
{{- define "vog.simulatorSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-simulator" (include "vog.name" . | trunc 53 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vog.simulatorLabels" -}}
helm.sh/chart: {{ include "vog.chart" . }}
{{ include "vog.simulatorSelectorLabels" . }}
app.kubernetes.io/component: simulator
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The gateway's upstream: the simulator's Service with simulator.asUpstream,
else gateway.upstream.baseUrl. */}}
{{- define "vog.upstreamBaseUrl" -}}
{{- if .Values.simulator.asUpstream }}
{{- printf "http://%s.%s.svc:%d" (include "vog.simulatorFullname" .) .Release.Namespace (int .Values.simulator.port) }}
{{- else }}
{{- .Values.gateway.upstream.baseUrl }}
{{- end }}
{{- end }}
