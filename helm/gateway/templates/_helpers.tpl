{{/* Names, labels and the decisions several templates share. */}}

{{- define "gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "gateway.fullname" -}}
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

{{/*
"<fullname>-<suffix>" within 63 characters, or within the third argument: the full name is
shortened, never the suffix, so names stay distinct; a shortened one ends with a hash of
the whole, so two long releases that differ only at the end do not share names. Call with
(list $ "suffix") or (list $ "suffix" 52).
*/}}
{{- define "gateway.component" -}}
{{- $root := index . 0 -}}
{{- $suffix := index . 1 -}}
{{- $max := 63 -}}
{{- if gt (len .) 2 -}}
{{- $max = int (index . 2) -}}
{{- end -}}
{{- $full := include "gateway.fullname" $root -}}
{{- $room := int (sub (sub $max 1) (len $suffix)) -}}
{{- $prefix := $full -}}
{{- if gt (len $full) $room -}}
{{- $prefix = printf "%s-%s" ($full | trunc (int (sub $room 6)) | trimAll "-") ($full | sha256sum | trunc 5) -}}
{{- end -}}
{{- printf "%s-%s" ($prefix | trimAll "-") $suffix -}}
{{- end -}}

{{/*
The chart's Redis (StatefulSet, Service, Secret). A StatefulSet stamps its pods with
controller-revision-hash: "<name>-<10-character hash>", a label value of at most 63
characters, so its name may have at most 52.
*/}}
{{- define "gateway.redisName" -}}
{{- include "gateway.component" (list . "redis" 52) -}}
{{- end -}}

{{- define "gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels; call with (list $ "component"). */}}
{{- define "gateway.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "gateway.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* All labels; call with (list $ "component"). */}}
{{- define "gateway.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ include "gateway.chart" $root }}
{{ include "gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/part-of: gateway
{{- end -}}

{{- define "gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "gateway.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* "true" when more than one gateway pod may run: limits and keys must then be shared. */}}
{{- define "gateway.multiReplica" -}}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) -}}true{{- end -}}
{{- end -}}

{{/* "true" when the gateway gets a Redis URL. */}}
{{- define "gateway.redisEnabled" -}}
{{- if or .Values.redis.statefulset.enabled .Values.redis.external.url .Values.redis.external.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The Secret with the server secrets (GATEWAY_SECRET_*). */}}
{{- define "gateway.secretsName" -}}
{{- default (include "gateway.component" (list . "secrets")) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* "true" when verification keys come from a Secret mounted at /etc/gateway/keys. */}}
{{- define "gateway.keysMounted" -}}
{{- if or .Values.auth.keys.existingSecret .Values.auth.keys.jwks .Values.auth.keys.pem -}}true{{- end -}}
{{- end -}}

{{/* "true" when every pod verifies with the same keys (not per-pod development keys). */}}
{{- define "gateway.sharedKeys" -}}
{{- if or .Values.auth.jwksUrl (include "gateway.keysMounted" .) .Values.auth.settings.hs256_secret_env -}}true{{- end -}}
{{- end -}}

{{- define "gateway.keysSecretName" -}}
{{- default (include "gateway.component" (list . "keys")) .Values.auth.keys.existingSecret -}}
{{- end -}}

{{/*
"true" when Prometheus may reach vLLM's /metrics: no NetworkPolicy, or peers listed in
networkPolicy.vllmFrom. Opening vLLM's port to Prometheus by default would open its API
(/v1, /tokenize) to it as well, around the gateway.
*/}}
{{- define "gateway.vllmScrapable" -}}
{{- if or (not .Values.networkPolicy.enabled) .Values.networkPolicy.vllmFrom -}}true{{- end -}}
{{- end -}}

{{- define "gateway.vllmUrl" -}}
{{- printf "http://%s:8000" (include "gateway.component" (list . "vllm")) -}}
{{- end -}}

{{- define "gateway.guardUrl" -}}
{{- printf "http://%s:8000" (include "gateway.component" (list . "guard")) -}}
{{- end -}}

{{/*
The gateway.yaml the pods read. Settings the chart owns (host, port, upstreams from the
chart's vLLM, auth key sources) are layered over .Values.config.
*/}}
{{- define "gateway.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $_ := set $cfg "host" "0.0.0.0" -}}
{{- $_ := set $cfg "port" (int .Values.containerPort) -}}
{{- $upstreams := default list .Values.config.upstreams -}}
{{- if .Values.vllm.enabled -}}
{{- $upstreams = append $upstreams (include "gateway.vllmUrl" .) -}}
{{- end -}}
{{- if $upstreams -}}
{{- $_ := set $cfg "upstreams" $upstreams -}}
{{- else -}}
{{- $_ := unset $cfg "upstreams" -}}
{{- end -}}
{{- $keys := .Values.auth.keys -}}
{{- if include "gateway.multiReplica" . -}}
{{- /* If Redis fails and ratelimit.on_store_error is "local", each pod enforces its share
of every limit: divide by the most pods there can be, so the sum never exceeds the limit. */ -}}
{{- $rl := default dict (deepCopy (default dict .Values.config.ratelimit)) -}}
{{- if not (hasKey $rl "replicas") -}}
{{- $_ := set $rl "replicas" (int (ternary .Values.autoscaling.maxReplicas .Values.replicaCount .Values.autoscaling.enabled)) -}}
{{- end -}}
{{- $_ := set $cfg "ratelimit" $rl -}}
{{- end -}}
{{- $auth := deepCopy .Values.auth.settings -}}
{{- if .Values.auth.jwksUrl -}}
{{- $_ := set $auth "jwks_url" .Values.auth.jwksUrl -}}
{{- end -}}
{{- if or $keys.jwks (and $keys.existingSecret (not $keys.pemKeys)) -}}
{{- $_ := set $auth "jwks_file" (printf "/etc/gateway/keys/%s" $keys.jwksKey) -}}
{{- end -}}
{{- $pem := list -}}
{{- range $name := concat (keys $keys.pem | sortAlpha) $keys.pemKeys -}}
{{- $pem = append $pem (printf "/etc/gateway/keys/%s" $name) -}}
{{- end -}}
{{- if $pem -}}
{{- $_ := set $auth "pem_files" $pem -}}
{{- end -}}
{{- $_ := set $auth "revocation_file" "/etc/gateway/revocation/revoked.txt" -}}
{{- $_ := set $cfg "auth" $auth -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
What the gateway pods read from the chart's own Secrets (as env vars, once, at start), for
the checksum/secrets annotation: a changed secrets.values entry or redis.external.url rolls
the pods. Generated values are left out on purpose: they are kept across upgrades (read back
with lookup), so they never change by themselves, and `helm template` (no cluster to read)
draws new ones on every render, which would roll the pods on every GitOps sync.
*/}}
{{- define "gateway.secretInputs" -}}
{{- $in := dict -}}
{{- if not .Values.secrets.existingSecret -}}
{{- range .Values.secrets.names -}}
{{- $_ := set $in (printf "secrets.%s" .) (get $.Values.secrets.values .) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.redis.external.url (not .Values.redis.external.existingSecret) -}}
{{- $_ := set $in "redis.url" .Values.redis.external.url -}}
{{- end -}}
{{- toJson $in -}}
{{- end -}}

{{/*
The GATEWAY_HOME volume source: homeVolume without null entries (`emptyDir: null`, once
needed to drop the default), or an emptyDir when that leaves nothing.
*/}}
{{- define "gateway.homeSource" -}}
{{- $source := dict -}}
{{- range $kind, $spec := .Values.homeVolume -}}
{{- if not (kindIs "invalid" $spec) -}}
{{- $_ := set $source $kind $spec -}}
{{- end -}}
{{- end -}}
{{- toYaml (default (dict "emptyDir" (dict "sizeLimit" "1Gi")) $source) -}}
{{- end -}}

{{/* preStop delay + drain + margin, unless set explicitly. */}}
{{- define "gateway.terminationGracePeriodSeconds" -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int (ceil .Values.config.drain_timeout_s)) -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- int .Values.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $floor 15 -}}
{{- end -}}
{{- end -}}

{{/*
A generated secret value that survives upgrades: the live Secret's value when the release
already has one (lookup), else a fresh random one. Call with (list $ secretName key length).
*/}}
{{- define "gateway.persistentRandom" -}}
{{- $root := index . 0 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace (index . 1) -}}
{{- if and $existing (hasKey ($existing.data | default dict) (index . 2)) -}}
{{- index $existing.data (index . 2) | b64dec -}}
{{- else -}}
{{- randAlphaNum (int (index . 3)) -}}
{{- end -}}
{{- end -}}

{{/*
Checks that fail `helm install` / `helm template` with a message instead of deploying
something unsafe or broken. values.schema.json catches types and ranges; these are the
rules across several values.
*/}}
{{- define "gateway.validate" -}}
{{- if include "gateway.multiReplica" . -}}
{{- if not (include "gateway.redisEnabled" .) -}}
{{- fail "replicaCount > 1 (or autoscaling.enabled) needs a shared Redis so rate limits hold across replicas: set redis.statefulset.enabled=true, or redis.external.existingSecret (or redis.external.url)" -}}
{{- end -}}
{{- if not (include "gateway.sharedKeys" .) -}}
{{- fail "replicaCount > 1 (or autoscaling.enabled) needs verification keys every pod shares: set auth.jwksUrl, auth.keys.existingSecret, auth.keys.jwks or auth.keys.pem (per-pod development keys only work with one replica)" -}}
{{- end -}}
{{- end -}}
{{- $home := include "gateway.homeSource" . | fromYaml -}}
{{- if gt (len $home) 1 -}}
{{- fail (printf "homeVolume: one volume source, e.g. {persistentVolumeClaim: {claimName: gw-home}}; got %s" (keys $home | sortAlpha | join ", ")) -}}
{{- end -}}
{{- if and .Values.homeVolume.persistentVolumeClaim (include "gateway.multiReplica" .) -}}
{{- fail "homeVolume.persistentVolumeClaim: one GATEWAY_HOME claim cannot serve several pods (SQLite audit log and ledger: one writer, one host). With replicaCount > 1 or autoscaling.enabled keep homeVolume an emptyDir and move the audit log and ledger to PostgreSQL (GATEWAY_AUDIT_URL, GATEWAY_LEDGER_URL)" -}}
{{- end -}}
{{- if and .Values.redis.statefulset.enabled (or .Values.redis.external.url .Values.redis.external.existingSecret) -}}
{{- fail "redis: choose one of redis.statefulset.enabled and redis.external" -}}
{{- end -}}
{{- if and .Values.auth.keys.existingSecret (or .Values.auth.keys.jwks .Values.auth.keys.pem) -}}
{{- fail "auth.keys: set either existingSecret or the keys themselves (jwks, pem), not both" -}}
{{- end -}}
{{- if and .Values.auth.keys.pemKeys (not .Values.auth.keys.existingSecret) -}}
{{- fail "auth.keys.pemKeys names keys of the existing Secret in auth.keys.existingSecret: set it, or use auth.keys.pem" -}}
{{- end -}}
{{- if .Values.terminationGracePeriodSeconds -}}
{{- $floor := add (int .Values.preStopSleepSeconds) (int (ceil .Values.config.drain_timeout_s)) -}}
{{- if le (int .Values.terminationGracePeriodSeconds) $floor -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + config.drain_timeout_s (%d), or in-flight requests are killed mid-drain" (int .Values.terminationGracePeriodSeconds) $floor) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.vllm.enabled .Values.vllm.logitsProcessor.enabled (not (has "vllm_watermark" .Values.secrets.names)) -}}
{{- fail "vllm.logitsProcessor needs \"vllm_watermark\" in secrets.names (its master key, shared with the gateway's detector)" -}}
{{- end -}}
{{- end -}}
