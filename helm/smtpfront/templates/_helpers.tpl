{{/* Names and labels. */}}
{{- define "smtpfront.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smtpfront.fullname" -}}
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

{{- define "smtpfront.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smtpfront.labels" -}}
helm.sh/chart: {{ include "smtpfront.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smtpfront
{{- end }}

{{/* Selector labels of the smtpfront pods. */}}
{{- define "smtpfront.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtpfront.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: smtpfront
{{- end }}

{{/* Selector labels of the consumer pods (smtpfront consume). */}}
{{- define "smtpfront.consumerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "smtpfront.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: consumer
{{- end }}

{{/* Selector labels of the HAProxy pods. */}}
{{- define "smtpfront.haproxySelectorLabels" -}}
app.kubernetes.io/name: {{ include "smtpfront.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: haproxy
{{- end }}

{{- define "smtpfront.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smtpfront.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "smtpfront.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The headless Service of the smtpfront pods (metrics, SRV records for HAProxy). */}}
{{- define "smtpfront.podsService" -}}
{{- printf "%s-pods" (include "smtpfront.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "smtpfront.agentCheck" -}}
{{- if or .Values.metrics.agentCheck.enabled .Values.haproxy.enabled }}true{{ end }}
{{- end }}

{{/* Where the pod reads its configuration and certificate. */}}
{{- define "smtpfront.configPath" -}}/etc/smtpfront/smtpfront.toml{{- end }}
{{- define "smtpfront.tlsDir" -}}/etc/smtpfront-tls{{- end }}

{{- define "smtpfront.tlsSecret" -}}
{{- default (printf "%s-tls" (include "smtpfront.fullname" .)) .Values.tls.existingSecret }}
{{- end }}

{{- define "smtpfront.redisSecret" -}}
{{- default (include "smtpfront.fullname" .) .Values.queue.existingSecret }}
{{- end }}

{{- define "smtpfront.redisPasswordKey" -}}
{{- if .Values.queue.existingSecret }}{{ .Values.queue.existingSecretKey }}{{ else }}redis-password{{ end }}
{{- end }}

{{/* REDIS_PASSWORD and SMTPFRONT_QUEUE (the URL with it) for the serve and consume containers. */}}
{{- define "smtpfront.queueEnv" -}}
{{- if include "smtpfront.redisPassword" . }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "smtpfront.redisSecret" . }}
      key: {{ include "smtpfront.redisPasswordKey" . }}
# The queue URL with the password, expanded by the kubelet; it overrides the file's.
- name: SMTPFRONT_QUEUE
  value: {{ regexReplaceAll "^([a-z+]+://)" .Values.queue.url (printf "${1}%s:$$(REDIS_PASSWORD)@" .Values.queue.username) | quote }}
{{- end }}
{{- end }}

{{- define "smtpfront.redisPassword" -}}
{{- if or .Values.queue.password .Values.queue.existingSecret }}true{{ end }}
{{- end }}

{{/* Workers per pod: .Values.workers, else the CPU request rounded up to whole cores (min 1). */}}
{{- define "smtpfront.workers" -}}
{{- if .Values.workers }}
{{- .Values.workers }}
{{- else }}
{{- $cpu := toString .Values.resources.requests.cpu }}
{{- $milli := 0 }}
{{- if hasSuffix "m" $cpu }}
{{- $milli = trimSuffix "m" $cpu | int }}
{{- else }}
{{- $milli = mulf (float64 $cpu) 1000 | ceil | int }}
{{- end }}
{{- max 1 (div (add $milli 999) 1000) }}
{{- end }}
{{- end }}

{{/*
The smtpfront configuration as a dict: .Values.config plus what the chart owns (workers,
queue, listeners, [metrics], the certificate files, the graceful timeout).
*/}}
{{- define "smtpfront.configDict" -}}
{{- $c := deepCopy .Values.config }}
{{- $_ := set $c "workers" (include "smtpfront.workers" . | int) }}
{{- $_ = set $c "queue" .Values.queue.url }}
{{- $listeners := list }}
{{- range .Values.listeners }}
{{- $l := omit . "name" "port" "servicePort" }}
{{- $_ = set $l "address" (printf "%s:%d" $.Values.bindAddress (int .port)) }}
{{- if $.Values.haproxy.enabled }}
{{- $_ = set $l "proxy_protocol" true }}
{{- end }}
{{- $listeners = append $listeners $l }}
{{- end }}
{{- $_ = set $c "listeners" $listeners }}
{{- $metrics := dict "listen" (printf "%s:%d" .Values.bindAddress (int .Values.metrics.port)) }}
{{- if include "smtpfront.agentCheck" . }}
{{- $_ = set $metrics "agent_check_listen" (printf "%s:%d" .Values.bindAddress (int .Values.metrics.agentCheck.port)) }}
{{- end }}
{{- $_ = set $c "metrics" $metrics }}
{{- $supervisor := deepCopy (default (dict) $c.supervisor) }}
{{- $_ = set $supervisor "graceful_timeout" .Values.gracefulTimeout }}
{{- $_ = set $c "supervisor" $supervisor }}
{{- if .Values.tls.enabled }}
{{- $tls := deepCopy (default (dict) $c.tls) }}
{{- $_ = set $tls "cert_file" (printf "%s/tls.crt" (include "smtpfront.tlsDir" .)) }}
{{- $_ = set $tls "key_file" (printf "%s/tls.key" (include "smtpfront.tlsDir" .)) }}
{{- $_ = set $c "tls" $tls }}
{{- end }}
{{- if .Values.consumer.enabled }}
{{- $consumer := deepCopy (default (dict) $c.consumer) }}
{{- $_ = set $consumer "metrics_listen" (printf "%s:%d" .Values.bindAddress (int .Values.consumer.metricsPort)) }}
{{- $_ = set $c "consumer" $consumer }}
{{- end }}
{{- if .Values.haproxy.enabled }}
{{- $trust := deepCopy (default (dict) $c.trust) }}
{{- $_ = set $trust "proxy" (concat (default (list) $trust.proxy) .Values.haproxy.trustedNetworks | uniq) }}
{{- $_ = set $c "trust" $trust }}
{{- end }}
{{- toJson $c }}
{{- end }}

{{/* One TOML value: JSON's numbers, strings, booleans and arrays are TOML too; tables are inline. */}}
{{- define "smtpfront.tomlValue" -}}
{{- if kindIs "map" . }}
{{- $items := list }}
{{- range $k, $v := . }}
{{- $items = append $items (printf "%s = %s" (toJson $k) (include "smtpfront.tomlValue" $v)) }}
{{- end }}
{{- printf "{ %s }" (join ", " $items) }}
{{- else }}
{{- toJson . }}
{{- end }}
{{- end }}

{{/* Key = value lines of one table, keys sorted; sub-tables are written inline. */}}
{{- define "smtpfront.tomlTable" -}}
{{- range $k := keys . | sortAlpha }}
{{ $k }} = {{ include "smtpfront.tomlValue" (get $ $k) }}
{{- end }}
{{- end }}

{{/* The configuration file: top-level keys, then [[listeners]], then one [section] each. */}}
{{- define "smtpfront.toml" -}}
# smtpfront configuration, rendered by the Helm chart from its values.
{{- $c := include "smtpfront.configDict" . | fromJson }}
{{- $top := dict }}
{{- range $k, $v := $c }}
{{- if not (or (kindIs "map" $v) (eq $k "listeners")) }}
{{- $_ := set $top $k $v }}
{{- end }}
{{- end }}
{{- include "smtpfront.tomlTable" $top }}
{{- range $c.listeners }}

[[listeners]]
{{- include "smtpfront.tomlTable" . }}
{{- end }}
{{- range $k := keys $c | sortAlpha }}
{{- $v := get $c $k }}
{{- if kindIs "map" $v }}

[{{ $k }}]
{{- include "smtpfront.tomlTable" $v }}
{{- end }}
{{- end }}
{{- end }}
