{{- define "dind-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dind-operator.labels" -}}
app.kubernetes.io/name: dind-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dind-operator.selector" -}}
app.kubernetes.io/name: dind-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dind-operator.serviceAccountName" -}}
{{- default (include "dind-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "dind-operator.leaderElection" -}}
{{- if kindIs "bool" .Values.leaderElection.enabled -}}
{{- .Values.leaderElection.enabled -}}
{{- else -}}
{{- gt (int .Values.replicas) 1 -}}
{{- end -}}
{{- end -}}

{{- /* "true" when the operator watches every namespace (watchNamespaces contains "*"). */}}
{{- define "dind-operator.allNamespaces" -}}
{{- has "*" .Values.watchNamespaces -}}
{{- end -}}

{{- /* The default dind-init image: beside the operator image (same registry and path, same
tag), so a registry that serves one serves both; daemon.initImage overrides it. */}}
{{- define "dind-operator.initImage" -}}
{{- if .Values.daemon.initImage -}}
{{- .Values.daemon.initImage -}}
{{- else -}}
{{- $dir := dir .Values.image.repository -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if eq $dir "." -}}dind-init:{{ $tag }}{{- else -}}{{ $dir }}/dind-init:{{ $tag }}{{- end -}}
{{- end -}}
{{- end -}}
