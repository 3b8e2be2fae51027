{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "migration-runner.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: release-chart, unless the release name already holds the chart name. */}}
{{- define "migration-runner.fullname" -}}
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

{{- define "migration-runner.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "migration-runner.selectorLabels" -}}
app.kubernetes.io/name: {{ include "migration-runner.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "migration-runner.labels" -}}
helm.sh/chart: {{ include "migration-runner.chart" . }}
{{ include "migration-runner.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: migrations
{{- end }}

{{- define "migration-runner.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "migration-runner.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "migration-runner.secretKey" -}}
{{- ternary .Values.database.existingSecretKey "url" (ne .Values.database.existingSecret "") }}
{{- end }}

{{- define "migration-runner.secretName" -}}
{{- default (printf "%s-database" (include "migration-runner.fullname" .)) .Values.database.existingSecret }}
{{- end }}

{{/* repository@digest when a digest is set (the tag is then ignored), else repository:tag. */}}
{{- define "migration-runner.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the mounted Secrets go: the runner's default secrets directory, and the databases file's own. */}}
{{- define "migration-runner.secretsDir" -}}/run/secrets{{- end }}
{{- define "migration-runner.databasesDir" -}}/etc/migration-runner/databases{{- end }}

{{/* The database URL's Secret is mounted as a file (not for many databases, not from the project). */}}
{{- define "migration-runner.urlAsFile" -}}
{{- if and (eq .Values.database.secretAs "file") (not .Values.database.fromProject) (eq (int .Values.databases.count) 0) }}true{{- end }}
{{- end }}

{{/*
Annotations that make a supporting object (ServiceAccount, Secret, ConfigMap) exist before the Job
in every mode: a lower hook weight in `hook` mode (so a first `helm install` into an empty namespace
works), a lower Argo CD sync wave in `job` mode.
*/}}
{{- define "migration-runner.supportAnnotations" -}}
{{- if eq .Values.mode "hook" }}
helm.sh/hook: pre-install,pre-upgrade
helm.sh/hook-weight: {{ sub (int .Values.hook.weight) 5 | quote }}
helm.sh/hook-delete-policy: before-hook-creation
{{- else if and (eq .Values.mode "job") .Values.argocd.syncWave }}
argocd.argoproj.io/sync-wave: {{ sub (int .Values.argocd.syncWave) 1 | quote }}
{{- end }}
{{- end }}

{{/*
The runner's environment, shared by the Job and the init-container template.
Takes a dict: secretName (empty: no MIGRATION_DATABASE_URL), secretKey; secretsDir (the URL is a
mounted file there instead of a variable); databasesFile (many databases: MIGRATION_DATABASES_FILE).
*/}}
{{- define "migration-runner.env" -}}
{{- if .databasesFile }}
- name: MIGRATION_DATABASES_FILE
  value: {{ .databasesFile | quote }}
{{- else if .secretsDir }}
- name: MIGRATION_SECRETS_DIR
  value: {{ .secretsDir | quote }}
{{- else if .secretName }}
- name: MIGRATION_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
- name: MIGRATION_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: MIGRATION_POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: MIGRATION_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
{{- end }}

{{/* The pod template of the Job; its hash names the Job in `job` mode. */}}
{{- define "migration-runner.podTemplate" -}}
metadata:
  labels:
    {{- include "migration-runner.selectorLabels" . | nindent 4 }}
    {{- with .Values.job.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/settings: {{ include "migration-runner.settings" . | sha256sum }}
    {{- if .Values.istio.disableSidecar }}
    sidecar.istio.io/inject: "false"
    {{- end }}
    {{- with .Values.job.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  restartPolicy: Never
  enableServiceLinks: false
  serviceAccountName: {{ include "migration-runner.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: migrate
      image: {{ include "migration-runner.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- with .Values.image.entrypoint }}
      command: {{ toJson . }}
      {{- end }}
      args: [{{ .Values.command | quote }}]
      env:
        {{- $many := gt (int .Values.databases.count) 0 }}
        {{- $file := ternary (printf "%s/databases" (include "migration-runner.databasesDir" .)) "" $many }}
        {{- $dir := ternary (include "migration-runner.secretsDir" .) "" (eq (include "migration-runner.urlAsFile" .) "true") }}
        {{- include "migration-runner.env" (dict "secretName" (ternary "" (include "migration-runner.secretName" .) .Values.database.fromProject) "secretKey" (include "migration-runner.secretKey" .) "secretsDir" $dir "databasesFile" $file) | nindent 8 }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      envFrom:
        - configMapRef:
            name: {{ include "migration-runner.fullname" . }}
        {{- with .Values.extraEnvFrom }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if .Values.metrics.port }}
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
      {{- end }}
      {{- with .Values.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if eq (include "migration-runner.urlAsFile" .) "true" }}
        - name: database-url
          mountPath: {{ include "migration-runner.secretsDir" . }}
          readOnly: true
        {{- end }}
        {{- if gt (int .Values.databases.count) 0 }}
        - name: databases
          mountPath: {{ include "migration-runner.databasesDir" . }}
          readOnly: true
        {{- end }}
      {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
      {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        sizeLimit: 16Mi
    {{- if eq (include "migration-runner.urlAsFile" .) "true" }}
    # The URL as a file the runner reads (MIGRATION_SECRETS_DIR), not an environment variable that
    # every child process inherits.
    - name: database-url
      secret:
        secretName: {{ include "migration-runner.secretName" . }}
        defaultMode: 0444
        items:
          - key: {{ include "migration-runner.secretKey" . }}
            path: migration_database_url
    {{- end }}
    {{- if gt (int .Values.databases.count) 0 }}
    - name: databases
      secret:
        secretName: {{ required "databases.count needs databases.existingSecret: the Secret holding the databases file" .Values.databases.existingSecret }}
        defaultMode: 0444
        items:
          - key: {{ .Values.databases.existingSecretKey }}
            path: databases
    {{- end }}
  {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* MIGRATION_* settings for the ConfigMap, as key: value lines. */}}
{{- define "migration-runner.settings" -}}
MIGRATION_ENVIRONMENT: {{ .Values.environment | quote }}
{{- if .Values.metrics.port }}
MIGRATION_METRICS_PORT: {{ .Values.metrics.port | quote }}
MIGRATION_METRICS_LINGER: {{ .Values.metrics.linger | quote }}
{{- end }}
{{- if .Values.metrics.pushgatewayUrl }}
MIGRATION_PUSHGATEWAY_URL: {{ .Values.metrics.pushgatewayUrl | quote }}
{{- end }}
{{- range $name, $value := .Values.settings }}
MIGRATION_{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
An init-container that runs migration-runner in another chart's pods, typically `wait` (no RBAC,
no kubectl: it reads the version table) or `upgrade`. Include it from a Deployment:

  initContainers:
    {{- include "migration-runner.initContainer" (dict
          "image" "registry.example.com/app:1.2.3"
          "command" "wait"
          "databaseSecret" "app-db" "databaseSecretKey" "url"
          "environment" "production"
          "settings" (dict "WAIT_TIMEOUT" "600")) | nindent 4 }}
*/}}
{{- define "migration-runner.initContainer" -}}
- name: {{ .name | default "migrations" }}
  image: {{ required "migration-runner.initContainer needs an image" .image }}
  {{- /* command, not only args: in an application image, whose entrypoint is the application's, args
  alone would hand `wait` to that entrypoint. The runner image's entrypoint is the same program. */}}
  command: {{ .entrypoint | default (list "migration-runner") | toJson }}
  args: [{{ .command | default "wait" | quote }}]
  env:
    {{- include "migration-runner.env" (dict "secretName" (required "migration-runner.initContainer needs databaseSecret" .databaseSecret) "secretKey" (.databaseSecretKey | default "url")) | nindent 4 }}
    - name: MIGRATION_ENVIRONMENT
      value: {{ .environment | default "production" | quote }}
    {{- range $name, $value := .settings }}
    - name: MIGRATION_{{ $name }}
      value: {{ $value | toString | quote }}
    {{- end }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    {{- /* runAsNonRoot alone fails an image whose USER is root or a name: the kubelet cannot prove it */}}
    runAsUser: {{ .runAsUser | default 65532 | int64 }}
    runAsGroup: {{ .runAsGroup | default 65532 | int64 }}
    capabilities:
      drop: [ALL]
    seccompProfile:
      type: RuntimeDefault
  {{- with .resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
