{{/* Labels every object carries. */}}
{{- define "ocps-jobs.labels" -}}
app.kubernetes.io/part-of: ocps-jobs
{{- end }}

{{/* The functions' (and `ocps-jobs serve`'s) image; its tag defaults to appVersion. */}}
{{- define "ocps-jobs.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The uploader's image, of the same release unless set. */}}
{{- define "ocps-jobs.uploaderImage" -}}
{{ .Values.uploader.image.repository }}:{{ .Values.uploader.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The ServiceAccount of the job pods (no Role, no API token). */}}
{{- define "ocps-jobs.jobServiceAccount" -}}
ocps-job-runner
{{- end }}

{{/* The ServiceAccount of `ocps-jobs serve` in the deployment topology. */}}
{{- define "ocps-jobs.serverName" -}}
ocps-jobs-server
{{- end }}

{{/* Pod-template annotation: a changed ConfigMap rolls the pods (a new Knative revision). */}}
{{- define "ocps-jobs.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}

{{/* The identity header: as set, else Gafaelfawr's behind a GafaelfawrIngress. */}}
{{- define "ocps-jobs.authHeader" -}}
{{- if .Values.config.authHeader -}}
{{ .Values.config.authHeader }}
{{- else if and (eq .Values.topology "deployment") (eq .Values.deployment.ingress.type "gafaelfawr") -}}
X-Auth-Request-User
{{- end }}
{{- end }}

{{/* Environment of every server-side container besides the ConfigMap. */}}
{{- define "ocps-jobs.serverEnv" -}}
- name: OCPS_BACKEND
  value: kubernetes
# Jobs go to the pod's own namespace (Knative: kubernetes.podspec-fieldref).
- name: OCPS_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3.name }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.s3.name }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}

{{/* The restricted security context of every container of the service. */}}
{{- define "ocps-jobs.securityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* The mount of the clients' bearer tokens. */}}
{{- define "ocps-jobs.tokensMount" -}}
- name: auth-tokens
  mountPath: /etc/ocps/tokens
  readOnly: true
{{- end }}

{{/* The volume of the clients' bearer tokens (optional: header-only deployments). */}}
{{- define "ocps-jobs.tokensVolume" -}}
- name: auth-tokens
  secret:
    secretName: {{ .Values.secrets.tokens.name }}
    optional: true
{{- end }}

{{/*
One function's Knative Service. Arguments: root (the chart's context), key (its values
under knative.functions), function (the functions-framework target), description.
*/}}
{{- define "ocps-jobs.knativeService" -}}
{{- $root := .root -}}
{{- $fn := index $root.Values.knative.functions .key -}}
{{- $name := printf "ocps-%s" (.function | replace "_" "-") -}}
{{- $container := .function | replace "_" "-" -}}
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {{ $name }}
  labels:
    app.kubernetes.io/name: {{ $name }}
    {{- include "ocps-jobs.labels" $root | nindent 4 }}
    # Reached only through the HTTPRoute (httproute.yaml), not on a public domain of its own.
    networking.knative.dev/visibility: cluster-local
spec:
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{ $name }}
        {{- include "ocps-jobs.labels" $root | nindent 8 }}
      annotations:
        autoscaling.knative.dev/min-scale: {{ $fn.minScale | quote }}
        autoscaling.knative.dev/max-scale: {{ $fn.maxScale | quote }}
        {{- include "ocps-jobs.configChecksum" $root | nindent 8 }}
        {{- include "ocps-jobs.scrapeAnnotations" $root | nindent 8 }}
    spec:
      serviceAccountName: {{ $name }}
      containerConcurrency: {{ $fn.containerConcurrency }}
      timeoutSeconds: {{ $fn.timeoutSeconds }}
      containers:
        - name: {{ $container }}
          image: {{ include "ocps-jobs.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args: ["--source", "/app/functions/{{ .function }}/main.py", "--target", "{{ .function }}"]
          ports:
            - name: http1
              containerPort: 8080
          envFrom:
            - configMapRef:
                name: ocps-jobs-config
          env:
            {{- include "ocps-jobs.serverEnv" $root | nindent 12 }}
            # gunicorn threads of functions-framework: at least containerConcurrency.
            - name: THREADS
              value: {{ $fn.threads | quote }}
          # Bearer tokens of the clients (the CSC's among them): Secret {{ $root.Values.secrets.tokens.name }}.
          volumeMounts:
            {{- include "ocps-jobs.tokensMount" $root | nindent 12 }}
          resources:
            {{- toYaml $fn.resources | nindent 12 }}
          {{- include "ocps-jobs.probes" (dict) | nindent 10 }}
          securityContext:
            {{- include "ocps-jobs.securityContext" $root | nindent 12 }}
      volumes:
        {{- include "ocps-jobs.tokensVolume" $root | nindent 8 }}
{{- end }}

{{/* Prometheus scrapes /metrics on the service's own port (README: Logs and metrics). */}}
{{- define "ocps-jobs.scrapeAnnotations" -}}
prometheus.io/scrape: "true"
prometheus.io/port: "8080"
prometheus.io/path: /metrics
{{- end }}

{{/*
The probes of every server container. Arguments: port (none for Knative, which probes
the container's one port). Ready when Kubernetes, its watch
and the bucket answer (503 naming the part that does not); alive while the process
answers. A bad setting stops the process at start, so a broken revision never becomes
Ready.
*/}}
{{- define "ocps-jobs.probes" -}}
readinessProbe:
  httpGet:
    path: /readyz
    {{- with .port }}
    port: {{ . }}
    {{- end }}
  periodSeconds: 2
  timeoutSeconds: 5
  failureThreshold: 3
livenessProbe:
  httpGet:
    path: /healthz
    {{- with .port }}
    port: {{ . }}
    {{- end }}
  periodSeconds: 10
  failureThreshold: 3
{{- end }}
