{{/* Names ------------------------------------------------------------------ */}}

{{- define "mpn-notify.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mpn-notify.fullname" -}}
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

{{- define "mpn-notify.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The admin Service's name is the fullname plus "-admin", within 63 characters. */}}
{{- define "mpn-notify.adminName" -}}
{{- printf "%s-admin" (include "mpn-notify.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* The console Service: fullname plus "-console", within 63 characters. */}}
{{- define "mpn-notify.consoleName" -}}
{{- printf "%s-console" (include "mpn-notify.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* The history backup's CronJob, PVC and ConfigMap: fullname plus "-history-backup",
     within 52 characters (a CronJob's Jobs append 11). */}}
{{- define "mpn-notify.backupName" -}}
{{- printf "%s-history-backup" (include "mpn-notify.fullname" . | trunc 37 | trimSuffix "-") }}
{{- end }}

{{- define "mpn-notify.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mpn-notify.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* part-of is fixed: the ServiceMonitor takes the Prometheus job name from it, and the
     alert rules (files/prometheus-rules.yaml) match job="mpn-notify". */}}
{{- define "mpn-notify.labels" -}}
helm.sh/chart: {{ include "mpn-notify.chart" . }}
{{ include "mpn-notify.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mpn-notify
{{- end }}

{{/* The backup job's pods have their own name label, so that the Deployment's selector,
     the Services, the PodDisruptionBudget and the engine's NetworkPolicy never match
     them. */}}
{{- define "mpn-notify.backupSelectorLabels" -}}
app.kubernetes.io/name: {{ include "mpn-notify.name" . | trunc 48 | trimSuffix "-" }}-history-backup
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mpn-notify.backupLabels" -}}
helm.sh/chart: {{ include "mpn-notify.chart" . }}
{{ include "mpn-notify.backupSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mpn-notify
app.kubernetes.io/component: history-backup
{{- end }}

{{- define "mpn-notify.backupImage" -}}
{{- with .Values.history.backup.image }}
{{- if .digest }}{{ printf "%s@%s" .repository .digest }}{{ else }}{{ printf "%s:%s" .repository .tag }}{{ end }}
{{- end }}
{{- end }}

{{/* The history backup runs: history on, backup on. */}}
{{- define "mpn-notify.backupEnabled" -}}
{{- if and .Values.history.enabled .Values.history.backup.enabled }}true{{ end }}
{{- end }}

{{/* The console is served: history on, console on. */}}
{{- define "mpn-notify.consoleEnabled" -}}
{{- if and .Values.history.enabled .Values.console.enabled }}true{{ end }}
{{- end }}

{{- define "mpn-notify.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mpn-notify.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mpn-notify.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .Values.image.registry) .Values.image.repository }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Fixed in-container paths -------------------------------------------------
     The engine reads ONE config file; every other file it reads is named in it.
     Kept in one place so the ConfigMap, the mounts and the docs agree. */}}
{{- define "mpn-notify.paths" -}}
config: /etc/mpn-notify/mpn-notify.toml
tlsDir: /etc/mpn-notify/tls
clientCaDir: /etc/mpn-notify/client-ca
credentialsDir: /etc/mpn-notify/credentials
adminDir: /etc/mpn-notify/admin
kafkaCaDir: /etc/mpn-notify/kafka-ca
kafkaClientDir: /etc/mpn-notify/kafka-client
historyKeysDir: /etc/mpn-notify/history
{{- end }}

{{- define "mpn-notify.grpcPort" -}}50051{{- end }}
{{- define "mpn-notify.adminPort" -}}9464{{- end }}
{{- define "mpn-notify.consolePort" -}}8090{{- end }}

{{/* The settings the engine gets: values' config.settings with the chart-owned keys
     (listen addresses, mounted file paths) set over them. Returned as JSON. */}}
{{- define "mpn-notify.settings" -}}
{{- $p := include "mpn-notify.paths" . | fromYaml }}
{{- $s := deepCopy (default (dict) .Values.config.settings) }}
{{- range $section := list "kafka" "grpc" "metrics" "auth" "admin" }}
{{- if not (hasKey $s $section) }}{{- $_ := set $s $section (dict) }}{{- end }}
{{- end }}
{{- $_ := set $s.grpc "listen" (printf "0.0.0.0:%s" (include "mpn-notify.grpcPort" .)) }}
{{- $_ := set $s.metrics "listen" (printf "0.0.0.0:%s" (include "mpn-notify.adminPort" .)) }}
{{- with .Values.grpcTls }}
{{- if .existingSecret }}
{{- $tls := default (dict) $s.grpc.tls }}
{{- $_ := set $tls "cert_file" (printf "%s/tls.crt" $p.tlsDir) }}
{{- $_ := set $tls "key_file" (printf "%s/tls.key" $p.tlsDir) }}
{{- $_ := set $tls "client_auth" .clientAuth }}
{{- if .clientCaSecret }}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" $p.clientCaDir .clientCaKey) }}
{{- end }}
{{- $_ := set $s.grpc "tls" $tls }}
{{- end }}
{{- end }}
{{- if .Values.credentials.existingSecret }}
{{- $_ := set $s.auth "credentials_file" (printf "%s/%s" $p.credentialsDir .Values.credentials.key) }}
{{- end }}
{{- if .Values.adminToken.existingSecret }}
{{- $_ := set $s.admin "token_file" (printf "%s/%s" $p.adminDir .Values.adminToken.key) }}
{{- end }}
{{- $props := default (dict) $s.kafka.properties }}
{{- if .Values.kafkaTls.caSecret }}
{{- $_ := set $props "ssl.ca.location" (printf "%s/%s" $p.kafkaCaDir .Values.kafkaTls.caKey) }}
{{- end }}
{{- if .Values.kafkaTls.clientSecret }}
{{- $_ := set $props "ssl.certificate.location" (printf "%s/tls.crt" $p.kafkaClientDir) }}
{{- $_ := set $props "ssl.key.location" (printf "%s/tls.key" $p.kafkaClientDir) }}
{{- end }}
{{- $_ := set $s.kafka "properties" $props }}
{{- /* history.database_url is not here: it comes from a Secret through the
       environment (MPN_HISTORY__DATABASE_URL, see the Deployment). */}}
{{- if .Values.history.enabled }}
{{- $h := deepCopy (default (dict) $s.history) }}
{{- $_ := set $h "encryption_keys_file" (printf "%s/encryption-keys" $p.historyKeysDir) }}
{{- $_ := set $h "index_key_file" (printf "%s/index-key" $p.historyKeysDir) }}
{{- $_ := set $h "retention_days" .Values.history.retentionDays }}
{{- $_ := set $s "history" $h }}
{{- $c := deepCopy (default (dict) $s.console) }}
{{- $_ := set $c "enabled" (eq (include "mpn-notify.consoleEnabled" .) "true") }}
{{- if include "mpn-notify.consoleEnabled" . }}
{{- $_ := set $c "listen" (printf "0.0.0.0:%s" (include "mpn-notify.consolePort" .)) }}
{{- end }}
{{- $_ := set $s "console" $c }}
{{- end }}
{{- range $section := list "auth" "admin" "history" "console" }}
{{- if empty (get $s $section) }}{{- $_ := unset $s $section }}{{- end }}
{{- end }}
{{- toJson $s }}
{{- end }}

{{/* TOML rendering ------------------------------------------------------------
     A table's plain keys first, then its sub-tables as [a.b] sections (TOML requires
     that order). Lists render inline; maps inside lists as inline tables. YAML numbers
     arrive as float64: whole ones are written as integers (the engine's keys are). */}}
{{- define "mpn-notify.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "mpn-notify.toml.value" -}}
{{- if kindIs "string" . }}{{ toJson . }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if or (kindIs "float64" .) (kindIs "float32" .) }}{{ if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (kindIs "int" .) (kindIs "int64" .) (kindIs "uint64" .) }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "mpn-notify.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" . }}{{ $m := . }}{ {{ range $i, $k := keys $m | sortAlpha }}{{ if $i }}, {{ end }}{{ include "mpn-notify.toml.key" $k }} = {{ include "mpn-notify.toml.value" (get $m $k) }}{{ end }} }
{{- else }}{{ fail (printf "config.settings: cannot write %v (%s) as TOML; remove null values" . (kindOf .)) }}
{{- end }}
{{- end }}

{{- define "mpn-notify.toml.table" -}}
{{- $path := .path }}
{{- range $k, $v := .table }}
{{- if not (kindIs "map" $v) }}
{{ include "mpn-notify.toml.key" $k }} = {{ include "mpn-notify.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $sub := include "mpn-notify.toml.key" $k }}
{{- if $path }}{{ $sub = printf "%s.%s" $path $sub }}{{ end }}

[{{ $sub }}]
{{- include "mpn-notify.toml.table" (dict "path" $sub "table" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mpn-notify.toml" -}}
# mpn-notify configuration rendered by the Helm chart {{ include "mpn-notify.chart" . }}
# from config.settings (engine key names: docs/mpn-notify.example.toml). Listen
# addresses and mounted file paths are set by the chart.
{{- include "mpn-notify.toml.table" (dict "path" "" "table" (include "mpn-notify.settings" . | fromJson)) }}
{{ end }}

{{/* Checks that values.schema.json cannot express ------------------------------ */}}
{{- define "mpn-notify.validate" -}}
{{- $settings := include "mpn-notify.settings" . | fromJson }}
{{- $drainMs := 5000 }}
{{- with $settings.ingest }}{{- if hasKey . "drain_timeout_ms" }}{{- $drainMs = .drain_timeout_ms }}{{- end }}{{- end }}
{{- $needed := add (int .Values.preStopSleepSeconds) (div (mul 3 (int64 $drainMs)) 1000) 10 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $needed) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least preStopSleepSeconds + 3 x ingest.drain_timeout_ms + 10 s = %d, or SIGKILL cuts the drain short" (int .Values.terminationGracePeriodSeconds) (int $needed)) }}
{{- end }}
{{- if and (ne .Values.grpcTls.clientAuth "none") (not .Values.grpcTls.clientCaSecret) }}
{{- fail "grpcTls.clientAuth optional/required needs grpcTls.clientCaSecret (the CA client certificates chain to)" }}
{{- end }}
{{- if and (ne .Values.grpcTls.clientAuth "none") (not .Values.grpcTls.existingSecret) }}
{{- fail "grpcTls.clientAuth needs grpcTls.existingSecret: mutual TLS is TLS first" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set either minAvailable or maxUnavailable, not both (null the other)" }}
{{- end }}
{{- if .Values.networkPolicy.enabled }}
{{- $g := .Values.networkPolicy.grpc }}
{{- if not (or $g.allowedCIDRs $g.allowedNamespaces $g.from) }}
{{- fail "networkPolicy.enabled: name who may reach gRPC (networkPolicy.grpc.allowedCIDRs, allowedNamespaces or from); an empty peer list would allow everybody" }}
{{- end }}
{{- $c := .Values.networkPolicy.console }}
{{- if and (include "mpn-notify.consoleEnabled" .) (not (or $c.allowedCIDRs $c.allowedNamespaces $c.from)) }}
{{- fail "networkPolicy.enabled with the console on: name who may reach it (networkPolicy.console.allowedCIDRs, allowedNamespaces or from); an empty peer list would allow everybody" }}
{{- end }}
{{- end }}
{{- if .Values.history.enabled }}
{{- if not .Values.history.databaseUrlSecret.name }}
{{- fail "history.enabled needs history.databaseUrlSecret.name: the Secret holding the PostgreSQL URL (it is never written into the ConfigMap)" }}
{{- end }}
{{- if not .Values.history.keysSecret }}
{{- fail "history.enabled needs history.keysSecret: the Secret holding the files encryption-keys and index-key" }}
{{- end }}
{{- end }}
{{- if include "mpn-notify.consoleEnabled" . }}
{{- $idleMs := 900000 }}
{{- with $settings.console }}{{- if hasKey . "idle_timeout_ms" }}{{- $idleMs = .idle_timeout_ms }}{{- end }}{{- end }}
{{- if lt (int64 .Values.console.service.sessionAffinityTimeoutSeconds) (div (int64 $idleMs) 1000) }}
{{- fail (printf "console.service.sessionAffinityTimeoutSeconds (%d) must be at least console.idle_timeout_ms / 1000 (%d): a client moved to another replica loses its session" (int64 .Values.console.service.sessionAffinityTimeoutSeconds) (div (int64 $idleMs) 1000)) }}
{{- end }}
{{- end }}
{{- end }}
