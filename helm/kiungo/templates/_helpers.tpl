{{/*
Names.
*/}}
{{- define "kiungo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiungo.fullname" -}}
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

{{- define "kiungo.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kiungo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiungo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kiungo.labels" -}}
helm.sh/chart: {{ include "kiungo.chart" . }}
{{ include "kiungo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/component: bridge
app.kubernetes.io/part-of: kiungo
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kiungo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kiungo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kiungo.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Where the mapping packs come from: "image", "values", "configMap" or "volume".
*/}}
{{- define "kiungo.mappingsSource" -}}
{{- if .Values.mappings }}values
{{- else if .Values.mappingsFrom.existingConfigMap }}configMap
{{- else if .Values.mappingsFrom.volume }}volume
{{- else }}image
{{- end }}
{{- end }}

{{/*
The folder the config's `mappings:` points at.
*/}}
{{- define "kiungo.mappingsDir" -}}
{{- if eq (include "kiungo.mappingsSource" .) "image" }}/usr/share/kiungo/mappings
{{- else }}/etc/kiungo/mappings
{{- end }}
{{- end }}

{{/*
ConfigMap key of a mapping file path: `/` is not allowed in keys, so
`cht-anc/anc-visit.yaml` is stored as `cht-anc__anc-visit.yaml` and put
back in its folder by the volume's `items`.
*/}}
{{- define "kiungo.mappingKey" -}}
{{- . | replace "/" "__" }}
{{- end }}

{{- define "kiungo.sqliteUrl" -}}
sqlite:/var/lib/kiungo/kiungo.db
{{- end }}

{{/*
The config file as rendered into the ConfigMap: `.Values.config` plus what
the chart owns (mappings folder, listen address, SQLite path).
*/}}
{{- define "kiungo.config" -}}
{{- $config := deepCopy .Values.config }}
{{- if not (hasKey $config "mappings") }}
{{- $_ := set $config "mappings" (include "kiungo.mappingsDir" .) }}
{{- end }}
{{- $http := get $config "http" | default dict }}
{{- $_ := set $http "listen" (printf "0.0.0.0:%d" (int .Values.containerPort)) }}
{{- $_ := set $config "http" $http }}
{{- if eq .Values.store.type "sqlite" }}
{{- $store := get $config "store" | default dict }}
{{- $_ := set $store "url" (include "kiungo.sqliteUrl" .) }}
{{- $_ := set $config "store" $store }}
{{- end }}
{{- /* The container's memory limit sizes what Kiungo holds in flight,
unless config.memory_limit says otherwise (Ki, Mi and Gi limits only). */}}
{{- $limit := ((.Values.resources | default dict).limits | default dict).memory | default "" | toString }}
{{- if and (not (hasKey $config "memory_limit")) (regexMatch "^[0-9]+(Ki|Mi|Gi)$" $limit) }}
{{- $_ := set $config "memory_limit" $limit }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
Environment variables the chart sets itself; `secretEnv` and `extraEnv`
may not name them.
*/}}
{{- define "kiungo.reservedEnv" -}}
KIUNGO_STORE_URL KIUNGO_HTTP_LISTEN KIUNGO_LOG_FORMAT RUST_LOG
{{- if .Values.otel.endpoint }} OTEL_EXPORTER_OTLP_ENDPOINT OTEL_SERVICE_NAME{{ end }}
{{- end }}

{{/*
Render-time checks the schema cannot express. Included by the Deployment.
*/}}
{{- define "kiungo.validate" -}}
{{- $v := .Values }}
{{- if eq $v.store.type "sqlite" }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d but store.type is sqlite: a SQLite store is single-replica (one pod, one file). Use store.type: postgres for several replicas." (int $v.replicaCount)) }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled is true but store.type is sqlite: a SQLite store is single-replica. Use store.type: postgres to autoscale." }}
{{- end }}
{{- end }}
{{- $cfgStore := $v.config.store | default dict }}
{{- if eq $v.store.type "postgres" }}
{{- $url := $cfgStore.url | default "" }}
{{- if and (not $v.store.postgres.existingSecret) (not (regexMatch "^postgres(ql)?://" $url)) }}
{{- fail "store.type is postgres: set store.postgres.existingSecret (a Secret holding the connection URL, read into KIUNGO_STORE_URL), or config.store.url to a postgres:// URL without a password." }}
{{- end }}
{{- if and $v.store.postgres.existingSecret $url }}
{{- fail "store.postgres.existingSecret and config.store.url are both set: KIUNGO_STORE_URL from the Secret would silently win. Keep one." }}
{{- end }}
{{- if $v.store.sqlite.persistence.enabled }}
{{- fail "store.sqlite.persistence.enabled is true but store.type is postgres." }}
{{- end }}
{{- else }}
{{- if and $cfgStore.url (ne $cfgStore.url (include "kiungo.sqliteUrl" .)) }}
{{- fail (printf "config.store.url is %s, but with store.type sqlite the chart places the database at %s (on the data volume). Remove config.store.url, or use store.type: postgres." $cfgStore.url (include "kiungo.sqliteUrl" .)) }}
{{- end }}
{{- end }}
{{- $http := $v.config.http | default dict }}
{{- if $http.listen }}
{{- fail "config.http.listen is set by the chart (0.0.0.0:<containerPort>); set containerPort instead." }}
{{- end }}
{{- if ge (int $v.preStopSleepSeconds) (int $v.terminationGracePeriodSeconds) }}
{{- fail "preStopSleepSeconds must be shorter than terminationGracePeriodSeconds (the drain after SIGTERM needs the rest)." }}
{{- end }}
{{- if and $v.autoscaling.enabled (not (dig "requests" "cpu" "" $v.resources)) }}
{{- fail "autoscaling.enabled needs resources.requests.cpu: CPU utilization is a share of the request." }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas is larger than autoscaling.maxReplicas." }}
{{- end }}
{{- $sources := 0 }}
{{- if $v.mappings }}{{ $sources = add1 $sources }}{{ end }}
{{- if $v.mappingsFrom.existingConfigMap }}{{ $sources = add1 $sources }}{{ end }}
{{- if $v.mappingsFrom.volume }}{{ $sources = add1 $sources }}{{ end }}
{{- if gt $sources 1 }}
{{- fail "give mapping packs one way only: mappings, mappingsFrom.existingConfigMap or mappingsFrom.volume." }}
{{- end }}
{{- $size := 0 }}
{{- range $path, $content := $v.mappings }}
{{- if contains "__" $path }}
{{- fail (printf "mappings: path %q contains \"__\", which the chart uses to encode folders in ConfigMap keys." $path) }}
{{- end }}
{{- $size = add $size (len $content) }}
{{- end }}
{{- if gt (int $size) 1000000 }}
{{- fail (printf "mappings: %d bytes in all, more than a ConfigMap holds (1 MiB). Use mappingsFrom.volume." (int $size)) }}
{{- end }}
{{- $reserved := splitList " " (include "kiungo.reservedEnv" .) }}
{{- range $name, $_ := $v.secretEnv }}
{{- if has $name $reserved }}
{{- fail (printf "secretEnv.%s: set by the chart (see store.postgres.existingSecret, containerPort, logFormat, logLevel, otel)." $name) }}
{{- end }}
{{- end }}
{{- range $v.extraEnv }}
{{- if has .name $reserved }}
{{- fail (printf "extraEnv: %s is set by the chart (see store.postgres.existingSecret, containerPort, logFormat, logLevel, otel)." .name) }}
{{- end }}
{{- if hasKey $v.secretEnv .name }}
{{- fail (printf "extraEnv: %s is also in secretEnv." .name) }}
{{- end }}
{{- end }}
{{- end }}
