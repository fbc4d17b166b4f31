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

{{- /* The default daemon image: daemon.image, or the project's daemon image beside the operator
image (same registry and path, same tag), which carries dind-init. */}}
{{- define "dind-operator.daemonImage" -}}
{{- if .Values.daemon.image -}}
{{- .Values.daemon.image -}}
{{- else -}}
{{- $dir := dir .Values.image.repository -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if eq $dir "." -}}dind-daemon:{{ $tag }}{{- else -}}{{ $dir }}/dind-daemon:{{ $tag }}{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Where the default daemon image carries dind-init: daemon.dindInitPath, else the project's
image's path when daemon.image is empty, else nothing (an init container copies it in). */}}
{{- define "dind-operator.daemonDindInitPath" -}}
{{- if .Values.daemon.dindInitPath -}}
{{- .Values.daemon.dindInitPath -}}
{{- else if not .Values.daemon.image -}}
/usr/local/bin/dind-init
{{- end -}}
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
