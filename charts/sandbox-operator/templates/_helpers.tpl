{{/*
Names, labels and the operator's environment. Every helper is prefixed with the chart's name.
*/}}

{{- define "sandbox-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name. We truncate at 63 characters because some Kubernetes name fields are limited to this (by the DNS
naming spec); the release name is used as is when it already contains the chart's name.
*/}}
{{- define "sandbox-operator.fullname" -}}
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

{{- define "sandbox-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sandbox-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sandbox-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sandbox-operator.labels" -}}
helm.sh/chart: {{ include "sandbox-operator.chart" . }}
{{ include "sandbox-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sandbox-operator
{{- end }}

{{- define "sandbox-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sandbox-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "sandbox-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must be pinned: \"latest\" is not allowed" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/*
The sandbox namespaces, checked: at least one unless cluster-wide, never the release namespace while the
namespace-wide default-deny policy is on (it would cut the operator off from the API server).
*/}}
{{- define "sandbox-operator.sandboxNamespaces" -}}
{{- $names := .Values.sandboxNamespaces.names | default list }}
{{- if and (not .Values.clusterWide) (not $names) }}
{{- fail "sandboxNamespaces.names must list at least one namespace when clusterWide is false" }}
{{- end }}
{{- if and .Values.watchPatterns (not .Values.clusterWide) }}
{{- fail "watchPatterns applies only with clusterWide: true (otherwise the operator watches sandboxNamespaces.names)" }}
{{- end }}
{{- if and (has .Release.Namespace $names) .Values.sandboxNamespaces.defaultDenyNetworkPolicy }}
{{- fail (printf "the release namespace %q must not be a sandbox namespace (its default-deny NetworkPolicy would cut the operator off); install the chart into its own namespace" .Release.Namespace) }}
{{- end }}
{{- if and (has .Release.Namespace $names) .Values.sandboxNamespaces.create }}
{{- fail (printf "sandboxNamespaces.create would create the release namespace %q: install the chart into its own namespace" .Release.Namespace) }}
{{- end }}
{{- toJson (uniq $names) }}
{{- end }}

{{/*
What the operator watches (SANDBOX_OPERATOR_NAMESPACES): the sandbox namespaces, or with clusterWide the
watchPatterns ("" = every namespace).
*/}}
{{- define "sandbox-operator.watchedNamespaces" -}}
{{- if .Values.clusterWide }}
{{- join "," .Values.watchPatterns }}
{{- else }}
{{- join "," (include "sandbox-operator.sandboxNamespaces" . | fromJsonArray) }}
{{- end }}
{{- end }}

{{/*
One environment value: lists comma-joined, whole numbers without an exponent (YAML numbers reach templates as
float64, and 104857600 would otherwise print as 1.048576e+08).
*/}}
{{- define "sandbox-operator.envValue" -}}
{{- if kindIs "slice" . }}
{{- join "," . }}
{{- else if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
The operator's SANDBOX_OPERATOR_* environment. config keys are camelCase settings names (defaultCpu ->
SANDBOX_OPERATOR_DEFAULT_CPU); an empty string or list leaves the operator's default.
*/}}
{{- define "sandbox-operator.env" -}}
- name: SANDBOX_OPERATOR_NAMESPACES
  value: {{ include "sandbox-operator.watchedNamespaces" . | quote }}
{{- range $key, $value := .Values.config }}
{{- if or (kindIs "bool" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) $value }}
- name: SANDBOX_OPERATOR_{{ $key | snakecase | upper }}
  value: {{ include "sandbox-operator.envValue" $value | quote }}
{{- end }}
{{- end }}
- name: SANDBOX_OPERATOR_HEALTH_PORT
  value: {{ .Values.health.port | int | toString | quote }}
- name: SANDBOX_OPERATOR_METRICS_PORT
  value: {{ ternary (.Values.metrics.port | int) 0 .Values.metrics.enabled | toString | quote }}
- name: SANDBOX_OPERATOR_BIND_ADDRESS
  value: "0.0.0.0"
- name: SANDBOX_OPERATOR_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: SANDBOX_OPERATOR_VERBOSE
  value: {{ .Values.logging.verbose | toString | quote }}
- name: SANDBOX_OPERATOR_INSTANCE_NAME
  value: {{ include "sandbox-operator.fullname" . | quote }}
- name: SANDBOX_OPERATOR_LEADER_ELECTION
  value: {{ .Values.leaderElection.enabled | toString | quote }}
{{- if .Values.leaderElection.enabled }}
- name: SANDBOX_OPERATOR_LEADER_ELECTION_LEASE_NAME
  value: {{ include "sandbox-operator.leaseName" . | quote }}
- name: SANDBOX_OPERATOR_LEASE_DURATION_SECONDS
  value: {{ .Values.leaderElection.leaseDurationSeconds | int | toString | quote }}
- name: SANDBOX_OPERATOR_RENEW_DEADLINE_SECONDS
  value: {{ .Values.leaderElection.renewDeadlineSeconds | int | toString | quote }}
- name: SANDBOX_OPERATOR_RETRY_PERIOD_SECONDS
  value: {{ .Values.leaderElection.retryPeriodSeconds | int | toString | quote }}
{{- end }}
# The pod's name (the Lease holder's identity) and namespace (where the Lease lives), from the downward API.
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
{{- end }}

{{/*
The Lease the replicas elect their leader with, in the release namespace: one per release.
*/}}
{{- define "sandbox-operator.leaseName" -}}
{{- include "sandbox-operator.fullname" . }}
{{- end }}

{{/*
The number of operator pods, checked: more than one only with leader election (two operators working at once
would both reconcile every Sandbox: two pods, conflicting status writes), and the Lease timing in the order the
operator requires (retry < renew deadline < lease duration), so that a mistake fails at install, not at start.
*/}}
{{- define "sandbox-operator.replicas" -}}
{{- $replicas := .Values.replicaCount | int }}
{{- $election := .Values.leaderElection }}
{{- if and (gt $replicas 1) (not $election.enabled) }}
{{- fail (printf "replicaCount %d needs leaderElection.enabled: true: without leader election every replica would reconcile the same Sandboxes at once; set replicaCount: 1 or enable leader election" $replicas) }}
{{- end }}
{{- if $election.enabled }}
{{- if not (lt ($election.retryPeriodSeconds | int) ($election.renewDeadlineSeconds | int)) }}
{{- fail (printf "leaderElection.retryPeriodSeconds (%d) must be less than leaderElection.renewDeadlineSeconds (%d): the leader must get more than one try to renew" ($election.retryPeriodSeconds | int) ($election.renewDeadlineSeconds | int)) }}
{{- end }}
{{- if not (lt ($election.renewDeadlineSeconds | int) ($election.leaseDurationSeconds | int)) }}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%d) must be less than leaderElection.leaseDurationSeconds (%d): a leader that cannot renew must stop before a standby may take over" ($election.renewDeadlineSeconds | int) ($election.leaseDurationSeconds | int)) }}
{{- end }}
{{- end }}
{{- $replicas }}
{{- end }}

{{/*
A whole number within bounds, or a failure naming the value's path: (list PATH VALUE MIN MAX). YAML and JSON
numbers reach templates as float64, --set ones as int64; strings, booleans and fractions are refused.
*/}}
{{- define "sandbox-operator.wholeNumber" -}}
{{- $path := index . 0 }}
{{- $value := index . 1 }}
{{- $min := index . 2 }}
{{- $max := index . 3 }}
{{- $whole := or (kindIs "int64" $value) (kindIs "int" $value) (and (kindIs "float64" $value) (eq (floor $value) $value)) }}
{{- if or (not $whole) (lt (float64 $value) (float64 $min)) (gt (float64 $value) (float64 $max)) }}
{{- fail (printf "%s must be a whole number from %d to %d, not %s" $path $min $max (toJson $value)) }}
{{- end }}
{{- int64 $value }}
{{- end }}
