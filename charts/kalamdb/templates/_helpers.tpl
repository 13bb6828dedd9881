{{/*
Names. fullname: fullnameOverride, else the release name. The operator's objects are
<fullname>-operator and <fullname>-operator-metrics.
*/}}
{{- define "kalamdb.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride -}}
{{- end -}}

{{- define "kalamdb.operatorName" -}}
{{- include "kalamdb.fullname" . -}}-operator
{{- end -}}

{{- define "kalamdb.serviceAccountName" -}}
{{- default (include "kalamdb.operatorName" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* The KalamCluster's name: cluster.name, else the release name. */}}
{{- define "kalamdb.clusterName" -}}
{{- default .Release.Name .Values.cluster.name -}}
{{- end -}}

{{- define "kalamdb.image" -}}
{{- .Values.image.repository -}}:{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{- define "kalamdb.clusterImage" -}}
{{- default (include "kalamdb.image" .) .Values.cluster.image -}}
{{- end -}}

{{/*
Labels of the chart's own objects. The operator's pods are app.kubernetes.io/name=kalam-operator,
never app.kubernetes.io/name=kalamdb: the operator selects a KalamCluster's pods with
app.kubernetes.io/name=kalamdb + app.kubernetes.io/instance=<cluster>, and a cluster may share
its name with the release.
*/}}
{{- define "kalamdb.selectorLabels" -}}
app.kubernetes.io/name: kalam-operator
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kalamdb.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/part-of: kalamdb
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
{{- end -}}

{{/* Labels of the operator's objects (Deployment, RBAC, ServiceAccount, metrics Service). */}}
{{- define "kalamdb.labels" -}}
{{ include "kalamdb.commonLabels" . }}
{{ include "kalamdb.selectorLabels" . }}
{{- end -}}
