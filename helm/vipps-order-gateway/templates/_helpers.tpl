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
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is greater than autoscaling.maxReplicas" }}
{{- end }}
{{- end }}
