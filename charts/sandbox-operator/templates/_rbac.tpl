{{/*
THE operator's RBAC table: every permission it has, and why. Rendered into a Role in each sandbox namespace
(clusterWide: false) or into one ClusterRole (clusterWide: true); the cluster-scoped reads below always go into a
ClusterRole. Deliberately absent: pods/exec, pods/attach, pods/portforward, pods/ephemeralcontainers, secrets,
serviceaccounts/token, configmaps, nodes, wildcards, and the escalate/bind/impersonate verbs. kopf runs
standalone, so it needs no peering objects (kopf.dev); the replicas elect their leader with one Lease in the
release namespace (a Role of its own there).
*/}}

{{/* Namespaced rules: the objects the operator reconciles. */}}
{{- define "sandbox-operator.rules.namespaced" -}}
# Application: the Sandboxes. kopf lists and watches them and patches its finalizer and progress annotations;
# the operator reads one fresh before each status write, and the collector deletes idle and expired ones.
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxes"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Application: the status, written only through the status subresource (merge patches).
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxes/status"]
  verbs: ["get", "patch"]
# Application: children carry a controller reference with blockOwnerDeletion, which the
# OwnerReferencesPermissionEnforcement admission plugin (where enabled) allows only with update on finalizers.
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxes/finalizers"]
  verbs: ["update"]
# Application: the SandboxPools, listed and watched (kopf event handlers, which write nothing to the pool: no
# finalizer, no progress annotations) and read fresh before a claim. Never created, changed or deleted by the
# operator: pools are the chart's (values: pools) or an administrator's.
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxpools"]
  verbs: ["get", "list", "watch"]
# Application: the pool's status (ready, starting and claimed counts), merge-patched through the subresource.
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxpools/status"]
  verbs: ["get", "patch"]
# Application: unclaimed pool pods and the pool's policy name the pool as their controller, with
# blockOwnerDeletion (see sandboxes/finalizers).
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxpools/finalizers"]
  verbs: ["update"]
# Application: the one pod of each Sandbox, and the pools' pods. Watched for status; created, relabelled on spec
# changes, claimed (a conditional patch that hands a pool pod to a Sandbox), deleted (a pool pod only while
# unclaimed: the delete carries its resourceVersion). No pods/exec or pods/attach: commands reach sandboxes
# through the clients' own credentials.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Application: each Sandbox's and each pool's deny-all NetworkPolicy. Watched so that one deleted out of band is
# recreated.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Framework and application: Events about Sandboxes (one per status transition) and pools (PoolFull, Refilling,
# PodReplaced; a Sandbox's PoolEmpty); kopf posts handler errors.
# list: the kubelet's Evicted Event of a sandbox pod that ended without a reason (docs/operator.md, "Status").
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}

{{/* Leader election (the release namespace): the one Lease, read and renewed by name; create cannot be limited
to a name (the API server checks it before the object has one), and leases are the only thing it allows. */}}
{{- define "sandbox-operator.rules.leaderElection" -}}
# Application: the replicas' Lease: read to see who holds it, updated to take it over, renew it or release it.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ include "sandbox-operator.leaseName" . | quote }}]
  verbs: ["get", "update"]
# Application: the first replica creates the Lease.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
{{- end }}

{{/* Cluster-scoped reads kopf makes (ClusterRole in every mode). */}}
{{- define "sandbox-operator.rules.cluster" -}}
# Framework: kopf watches CustomResourceDefinitions to notice the Sandbox CRD being (re)installed.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# Application: the registry of served namespaces, one annotation per operator on the Sandbox CRD, which clients
# read to tell "no operator serves this namespace" from "not picked up yet" (docs/operator.md). That CRD only.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["sandboxes.sandbox-operator.io"]
  verbs: ["get", "patch"]
{{- if or (not .Values.clusterWide) .Values.watchPatterns }}
# Framework: with a list of namespaces (or globs) kopf lists and watches namespaces to match them, and notices
# one created after the operator started. Read-only, names and labels only.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/*
The clients' rules (SDK, sandboxctl, an agent platform). Bound per namespace, they allow exec there only.
*/}}
{{- define "sandbox-operator.rules.client" -}}
# Sandboxes: create, read, watch, delete, and patch (the SDK records activity in an annotation).
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxes"]
  verbs: ["get", "list", "watch", "create", "update", "patch", "delete"]
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxes/status"]
  verbs: ["get"]
# SandboxPools, read only: a Sandbox names one in spec.poolRef, and `sandboxctl pools` lists their counts.
# Pools are created by the chart (values: pools) or an administrator, not by clients.
- apiGroups: ["sandbox-operator.io"]
  resources: ["sandboxpools"]
  verbs: ["get", "list", "watch"]
# The sandbox pod, read to resolve where commands run.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list"]
# Commands and file transfer. Kubernetes 1.35 checks create for WebSocket exec; older ones get.
- apiGroups: [""]
  resources: ["pods/exec"]
  verbs: ["create", "get"]
# The Sandboxes' Events (sandboxctl events, the SDK's wait errors).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/*
The clients' cluster-scoped read: the registry of served namespaces on the Sandbox CRD, so that a client whose
Sandbox nobody picks up can say which namespaces the running operators serve. Bound cluster-wide (a CRD has no
namespace); it grants nothing else.
*/}}
{{- define "sandbox-operator.rules.clientRegistry" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["sandboxes.sandbox-operator.io"]
  verbs: ["get"]
{{- end }}

{{/* clientRole.subjects as RBAC subjects. */}}
{{- define "sandbox-operator.clientSubjects" -}}
{{- range .Values.clientRole.subjects }}
- kind: {{ .kind }}
  name: {{ .name | quote }}
  {{- if eq .kind "ServiceAccount" }}
  namespace: {{ required "clientRole.subjects: a ServiceAccount needs a namespace" .namespace }}
  {{- else }}
  apiGroup: rbac.authorization.k8s.io
  {{- end }}
{{- end }}
{{- end }}
