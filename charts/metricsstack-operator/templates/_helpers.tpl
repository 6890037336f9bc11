{{/* The release's full name, at most 63 characters (a DNS label). */}}
{{- define "metricsstack-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator's pods; never change them after install. */}}
{{- define "metricsstack-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object of the release. */}}
{{- define "metricsstack-operator.labels" -}}
{{ include "metricsstack-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: metricsstack
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "metricsstack-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "metricsstack-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Checks across values that the schema cannot express with a clear message. */}}
{{- define "metricsstack-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicaCount: %d replicas need leaderElection.enabled=true, else they would reconcile the same stacks at once; set replicaCount to 1 or enable leader election" (int .Values.replicaCount)) -}}
{{- end -}}
{{- end -}}

{{/* The ClusterRole (shipped here, never created by the operator) that lets each stack's
collectors read pods; the operator may only bind it. */}}
{{- define "metricsstack-operator.collectorClusterRole" -}}
{{- printf "%s-collector" (include "metricsstack-operator.fullname" . | trunc 53 | trimSuffix "-") -}}
{{- end -}}

{{/* The ClusterRole that lets each stack's query service check its callers' tokens and
rights (TokenReview, SubjectAccessReview); the operator may only bind it. */}}
{{- define "metricsstack-operator.queryServiceClusterRole" -}}
{{- printf "%s-query-service" (include "metricsstack-operator.fullname" . | trunc 49 | trimSuffix "-") -}}
{{- end -}}
