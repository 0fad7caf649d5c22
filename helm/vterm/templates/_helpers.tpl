{{/* Chart name, overridable. */}}
{{- define "vterm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; the release name alone when it already contains the chart name. */}}
{{- define "vterm.fullname" -}}
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

{{/* Name of one component's objects: (dict "ctx" $ "component" "web") */}}
{{- define "vterm.componentName" -}}
{{- printf "%s-%s" (include "vterm.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vterm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "web") */}}
{{- define "vterm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vterm.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* All labels of one component: (dict "ctx" $ "component" "web") */}}
{{- define "vterm.labels" -}}
helm.sh/chart: {{ include "vterm.chart" .ctx }}
{{ include "vterm.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: vterm
{{- end }}

{{- define "vterm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "vterm.secretName" -}}
{{- default (include "vterm.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "vterm.flowerSecretName" -}}
{{- default (printf "%s-flower" (include "vterm.fullname" .)) .Values.flower.auth.existingSecret }}
{{- end }}

{{/* The Bitnami Redis chart's fullname (its common.names.fullname). */}}
{{- define "vterm.redis.fullname" -}}
{{- if .Values.redis.fullnameOverride }}
{{- .Values.redis.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains "redis" .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
Environment of every vterm container, after envFrom (ConfigMap and Secret).
ALLOWED_HOSTS includes the pod's own address, which kubelet probes and Prometheus use as Host.
With the bundled Redis, REDIS_URL names Sentinel (sentinel://…, master REDIS_SENTINEL_MASTER, the
sentinels' own password REDIS_SENTINEL_PASSWORD) or the master; $(REDIS_PASSWORD) is expanded by
Kubernetes from the variable before it (vterm_project/redis_config.py reads them; docs/deploy.md).
*/}}
{{- define "vterm.env" -}}
{{- $hosts := concat (list "localhost" "127.0.0.1") .Values.config.allowedHosts }}
{{- if .Values.ingress.enabled }}
{{- $hosts = append $hosts .Values.ingress.host }}
{{- end -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: ALLOWED_HOSTS
  value: {{ printf "%s,$(POD_IP)" (join "," (uniq $hosts)) | quote }}
{{- if .Values.redis.enabled }}
{{- $auth := "" }}
{{- if .Values.redis.auth.enabled }}
{{- $auth = ":$(REDIS_PASSWORD)@" }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ default (include "vterm.redis.fullname" .) .Values.redis.auth.existingSecret }}
      key: {{ default "redis-password" .Values.redis.auth.existingSecretPasswordKey }}
{{- end }}
{{- if .Values.redis.sentinel.enabled }}
- name: REDIS_URL
  value: {{ printf "sentinel://%s%s:26379/0" $auth (include "vterm.redis.fullname" .) | quote }}
- name: REDIS_SENTINEL_MASTER
  value: {{ .Values.redis.sentinel.masterSet | quote }}
{{- if and .Values.redis.auth.enabled .Values.redis.auth.sentinel }}
{{- /* The Bitnami chart's sentinels ask for the same password (its auth.sentinel). */}}
- name: REDIS_SENTINEL_PASSWORD
  value: "$(REDIS_PASSWORD)"
{{- end }}
{{- else }}
- name: REDIS_URL
  value: {{ printf "redis://%s%s-master:6379/0" $auth (include "vterm.redis.fullname" .) | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vterm.envFrom" -}}
- configMapRef:
    name: {{ include "vterm.fullname" . }}
- secretRef:
    name: {{ include "vterm.secretName" . }}
{{- end }}

{{/*
Pod template annotations: roll the pods when their configuration changes. The secret's sum is
taken over the values it is made of, since a generated SECRET_KEY differs at every rendering.
*/}}
{{- define "vterm.podAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ list .Values.secret .Values.externalRedis | toJson | sha256sum }}
{{- end }}

{{/* Pod-level settings shared by every vterm pod. Shells must not see a service account token. */}}
{{- define "vterm.podSpec" -}}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Spread one component's pods over nodes: (dict "ctx" $ "component" "web") */}}
{{- define "vterm.topologySpread" -}}
topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "vterm.selectorLabels" . | nindent 8 }}
{{- end }}
