{{/* The chart's name, or nameOverride. */}}
{{- define "streamq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release's full name: fullnameOverride, or <release>-<chart> unless the release
     already contains the chart's name. */}}
{{- define "streamq.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "streamq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "streamq.labels" -}}
helm.sh/chart: {{ include "streamq.chart" . }}
{{ include "streamq.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: streamq
{{- end -}}

{{- define "streamq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The consumer Deployment of a stream: call with (dict "root" $ "stream" $name). The
     autoscaler finds it by this name. */}}
{{- define "streamq.consumerName" -}}
{{- printf "%s-consume-%s" (include "streamq.fullname" .root) .stream | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamq.autoscalerName" -}}
{{- printf "%s-autoscaler" (include "streamq.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "streamq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "streamq.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "streamq.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Who steers the consumers' replicas: "streamq", "keda" or "" (fixed replicas). */}}
{{- define "streamq.scaledBy" -}}
{{- if .Values.autoscaler.enabled -}}streamq{{- else if .Values.keda.enabled -}}keda{{- end -}}
{{- end -}}

{{/* The Redis connection as STREAMQ_REDIS_URL (and STREAMQ_REDIS_PASSWORD), from the existing
     Secret: the password stays out of the manifest and out of the URL, so any character is
     fine in it. */}}
{{- define "streamq.redisEnv" -}}
{{- $redis := .Values.redis -}}
{{- if $redis.urlKey }}
- name: STREAMQ_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret }}
      key: {{ $redis.urlKey }}
{{- else }}
{{- if $redis.passwordKey }}
- name: STREAMQ_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $redis.existingSecret }}
      key: {{ $redis.passwordKey }}
{{- end }}
{{- $scheme := ternary "rediss" "redis" $redis.tls.enabled -}}
{{- $query := list -}}
{{- if and $redis.tls.enabled $redis.tls.secret -}}
{{- $query = append $query "ssl_ca_certs=/etc/streamq/tls/ca.crt" -}}
{{- if $redis.tls.clientCertificate -}}
{{- $query = append $query "ssl_certfile=/etc/streamq/tls/tls.crt" -}}
{{- $query = append $query "ssl_keyfile=/etc/streamq/tls/tls.key" -}}
{{- end -}}
{{- end }}
- name: STREAMQ_REDIS_URL
  value: {{ printf "%s://%s:%v/%v%s" $scheme $redis.host $redis.port $redis.db (ternary (printf "?%s" (join "&" $query)) "" (gt (len $query) 0)) | quote }}
{{- end }}
- name: STREAMQ_CONFIG
  value: /etc/streamq/streamq.toml
{{- end -}}

{{/* Volumes every pod mounts: the config file, a writable /tmp, and the TLS secret. */}}
{{- define "streamq.volumes" -}}
- name: config
  configMap:
    name: {{ include "streamq.fullname" . }}
- name: tmp
  emptyDir: {}
{{- if and .Values.redis.tls.enabled .Values.redis.tls.secret }}
- name: tls
  secret:
    secretName: {{ .Values.redis.tls.secret }}
{{- end }}
{{- end -}}

{{- define "streamq.volumeMounts" -}}
- name: config
  mountPath: /etc/streamq/streamq.toml
  subPath: streamq.toml
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if and .Values.redis.tls.enabled .Values.redis.tls.secret }}
- name: tls
  mountPath: /etc/streamq/tls
  readOnly: true
{{- end }}
{{- end -}}

{{/* Liveness and readiness probes on `streamq health`: call with (dict "root" $ "args"
     (list ...)) — args select what the pod is checked for. */}}
{{- define "streamq.probes" -}}
{{- $probes := .root.Values.probes -}}
{{- if $probes.liveness.enabled }}
livenessProbe:
  exec:
    command: {{ concat (list "streamq" "health" "--fail-on" "down") .args | toJson }}
  periodSeconds: {{ $probes.liveness.periodSeconds }}
  timeoutSeconds: {{ $probes.liveness.timeoutSeconds }}
  failureThreshold: {{ $probes.liveness.failureThreshold }}
{{- end }}
{{- if $probes.readiness.enabled }}
readinessProbe:
  exec:
    command: {{ concat (list "streamq" "health" "--fail-on" "down") .args | toJson }}
  periodSeconds: {{ $probes.readiness.periodSeconds }}
  timeoutSeconds: {{ $probes.readiness.timeoutSeconds }}
  failureThreshold: {{ $probes.readiness.failureThreshold }}
{{- end }}
{{- end -}}
