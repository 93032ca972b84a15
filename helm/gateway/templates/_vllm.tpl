{{/*
A vLLM OpenAI server: Deployment, Service, model-cache claim and a NetworkPolicy that
admits only the gateway pods (and networkPolicy.vllmFrom). Used for the served model
(component "vllm") and the guard model (component "guard").
Call with (dict "root" $ "component" "vllm" "v" .Values.vllm).
*/}}
{{- define "gateway.vllm" -}}
{{- $root := .root -}}
{{- $component := .component -}}
{{- $v := .v -}}
{{- $name := include "gateway.component" (list $root $component) -}}
{{- $claim := include "gateway.component" (list $root (printf "%s-models" $component)) -}}
{{- $watermark := and (eq $component "vllm") $v.watermark.enabled -}}
{{- $processor := and (eq $component "vllm") $v.logitsProcessor.enabled -}}
{{- /* vLLM's --api-key, shared with the gateway (GATEWAY_SECRET_UPSTREAM_API_KEY for the
served model, GATEWAY_SECRET_GUARD_API_KEY for the guard): only the gateway can call them. */ -}}
{{- $keyName := ternary "upstream_api_key" "guard_api_key" (eq $component "vllm") -}}
{{- $keyed := has $keyName $root.Values.secrets.names -}}
{{- $wmSecret := default (include "gateway.component" (list $root "vllm-watermark")) (and $watermark $v.watermark.existingSecret) -}}
{{- if and $watermark (not $v.watermark.existingSecret) }}
apiVersion: v1
kind: Secret
metadata:
  name: {{ $wmSecret }}
  labels:
    {{- include "gateway.labels" (list $root $component) | nindent 4 }}
  annotations:
    helm.sh/resource-policy: keep
type: Opaque
data:
  # vLLM's WatermarkConfig.key is a non-negative integer: 18 digits, no leading zero.
  {{- $existing := include "gateway.persistentRandom" (list $root $wmSecret "key" 0) }}
  key: {{ default (printf "%d%s" (add1 (randInt 0 9)) (randNumeric 17)) $existing | b64enc | quote }}
---
{{- end }}
{{- if and (eq $v.modelCache.type "pvc") (not $v.modelCache.existingClaim) }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: {{ $claim }}
  labels:
    {{- include "gateway.labels" (list $root $component) | nindent 4 }}
  annotations:
    # Downloaded weights are expensive to fetch again: keep them past uninstall.
    helm.sh/resource-policy: keep
spec:
  accessModes:
    {{- toYaml $v.modelCache.accessModes | nindent 4 }}
  {{- with $v.modelCache.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ $v.modelCache.size }}
---
{{- end }}
apiVersion: v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    {{- include "gateway.labels" (list $root $component) | nindent 4 }}
spec:
  type: ClusterIP
  selector:
    {{- include "gateway.selectorLabels" (list $root $component) | nindent 4 }}
  ports:
    - name: http
      port: 8000
      targetPort: http
      protocol: TCP
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $name }}
  labels:
    {{- include "gateway.labels" (list $root $component) | nindent 4 }}
spec:
  replicas: {{ $v.replicas }}
  revisionHistoryLimit: 3
  # GPUs are scarce: a surge pod would wait for one; replace pods instead.
  strategy:
    type: Recreate
  selector:
    matchLabels:
      {{- include "gateway.selectorLabels" (list $root $component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "gateway.selectorLabels" (list $root $component) | nindent 8 }}
      {{- if and (or $processor $keyed) (not $root.Values.secrets.existingSecret) }}
      annotations:
        {{- if $processor }}
        # The processor's master key is read at start-up and must match the gateway's
        # detector: a new secrets.values.vllm_watermark rolls vLLM too.
        checksum/secrets: {{ get $root.Values.secrets.values "vllm_watermark" | sha256sum }}
        {{- end }}
        {{- if $keyed }}
        # The API key is read at start-up: a new value in secrets.values rolls vLLM.
        checksum/api-key: {{ get $root.Values.secrets.values $keyName | sha256sum }}
        {{- end }}
      {{- end }}
    spec:
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      containers:
        - name: vllm
          image: "{{ $v.image.repository }}:{{ $v.image.tag }}"
          imagePullPolicy: {{ $v.image.pullPolicy }}
          command: ["vllm", "serve"]
          args:
            - {{ $v.model | quote }}
            - --host=0.0.0.0
            - --port=8000
            - {{ printf "--served-model-name=%s" $v.servedModelName | quote }}
            {{- if $watermark }}
            {{- $wm := merge (dict "algorithm" $v.watermark.algorithm) (deepCopy $v.watermark.config) }}
            {{- /* The key comes from the Secret through $(VAR) expansion by the kubelet, so
            it never appears in the pod spec. */}}
            - {{ printf "--watermark-config=%s,\"key\":$(VLLM_WATERMARK_KEY)}" (toJson $wm | trimSuffix "}") | quote }}
            {{- end }}
            {{- if $processor }}
            - {{ printf "--logits-processors=%s" $v.logitsProcessor.class | quote }}
            {{- end }}
            {{- range $v.args }}
            - {{ . | quote }}
            {{- end }}
          ports:
            - name: http
              containerPort: 8000
              protocol: TCP
          env:
            - name: HF_HOME
              value: /models-cache
            {{- if $keyed }}
            - name: VLLM_API_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ include "gateway.secretsName" $root }}
                  key: {{ $keyName }}
            {{- end }}
            {{- if $watermark }}
            - name: VLLM_WATERMARK_KEY
              valueFrom:
                secretKeyRef:
                  name: {{ $wmSecret }}
                  key: key
            {{- end }}
            {{- if $processor }}
            - name: GATEWAY_SECRET_VLLM_WATERMARK
              valueFrom:
                secretKeyRef:
                  name: {{ include "gateway.secretsName" $root }}
                  key: vllm_watermark
            - name: GATEWAY_WATERMARK_GAMMA
              value: {{ $v.logitsProcessor.gamma | quote }}
            - name: GATEWAY_WATERMARK_DELTA
              value: {{ $v.logitsProcessor.delta | quote }}
            {{- end }}
            {{- with $v.hfToken.existingSecret }}
            - name: HF_TOKEN
              valueFrom:
                secretKeyRef:
                  name: {{ . }}
                  key: {{ $v.hfToken.key }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet: {path: /health, port: http}
            {{- toYaml $v.startupProbe | nindent 12 }}
          livenessProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 15
            timeoutSeconds: 5
            failureThreshold: 4
          readinessProbe:
            httpGet: {path: /health, port: http}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          resources:
            {{- $res := deepCopy $v.resources }}
            {{- $gpu := dict "nvidia.com/gpu" (int $v.gpus) }}
            {{- $_ := set $res "requests" (merge (default dict $res.requests) $gpu) }}
            {{- $_ := set $res "limits" (merge (default dict $res.limits) $gpu) }}
            {{- toYaml $res | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: models
              mountPath: /models-cache
            - name: shm
              mountPath: /dev/shm
      volumes:
        - name: models
          {{- if eq $v.modelCache.type "pvc" }}
          persistentVolumeClaim:
            claimName: {{ default $claim $v.modelCache.existingClaim }}
          {{- else if eq $v.modelCache.type "hostPath" }}
          hostPath:
            path: {{ $v.modelCache.hostPath }}
            type: DirectoryOrCreate
          {{- else }}
          emptyDir: {}
          {{- end }}
        - name: shm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $v.shmSize }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- if $root.Values.networkPolicy.enabled }}
---
# vLLM's --api-key guards only /v1: /tokenize, /metrics and the rest are open. So only
# the gateway (and networkPolicy.vllmFrom) may reach this port at all.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ $name }}
  labels:
    {{- include "gateway.labels" (list $root $component) | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "gateway.selectorLabels" (list $root $component) | nindent 6 }}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector:
            matchLabels:
              {{- include "gateway.selectorLabels" (list $root "gateway") | nindent 14 }}
        {{- with $root.Values.networkPolicy.vllmFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - {port: http, protocol: TCP}
{{- end }}
{{- end -}}
