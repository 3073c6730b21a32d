{{/*
Helpers. Every one is included with the root context (`.` at the top of a
template, or `$`), so `.Values`, `.Release` and `.Chart` are the chart's.
*/}}

{{/* The chart name, truncated to a DNS label. */}}
{{- define "weft.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every resource name: the release name, plus "-weft" unless
the release name already contains it. Truncated so that suffixes such as
"-control" still fit in 63 characters.
*/}}
{{- define "weft.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The control plane's name: Deployment, Service, ServiceAccount ("weft-control" for release "weft"). */}}
{{- define "weft.control" -}}
{{- printf "%s-control" (include "weft.fullname" .) }}
{{- end }}

{{/* chart label value: name-version. */}}
{{- define "weft.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "weft.labels" -}}
helm.sh/chart: {{ include "weft.chart" . }}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: weft
{{- end }}

{{/* Selector labels of the control plane pods (never change them: selectors are immutable). */}}
{{- define "weft.controlSelectorLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{/* The control plane's ServiceAccount name. */}}
{{- define "weft.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "weft.control" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image, repository:tag (tag defaults to appVersion). */}}
{{- define "weft.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The image injected into meshed pods. */}}
{{- define "weft.proxyImage" -}}
{{- default (include "weft.image" .) .Values.proxy.image }}
{{- end }}

{{/* The issuer Secret's name (user-provided or generated). */}}
{{- define "weft.issuerSecret" -}}
{{- default (printf "%s-issuer" (include "weft.fullname" .)) .Values.identity.issuer.existingSecret }}
{{- end }}

{{/* The webhook serving certificate Secret's name (user-provided or generated). */}}
{{- define "weft.webhookSecret" -}}
{{- default (printf "%s-webhook-tls" (include "weft.fullname" .)) .Values.webhook.certificate.existingSecret }}
{{- end }}

{{/* The control plane Service's in-cluster DNS name. */}}
{{- define "weft.controlHost" -}}
{{- printf "%s.%s.svc.%s" (include "weft.control" .) .Release.Namespace .Values.mesh.clusterDomain }}
{{- end }}

{{/* What injected proxies dial: TLS, so https (a proxy refuses http). */}}
{{- define "weft.controlPlaneUrl" -}}
{{- printf "https://%s:%v" (include "weft.controlHost" .) .Values.controlPlane.grpcPort }}
{{- end }}

{{/* The ConfigMap (release namespace) holding identity.trustAnchorsPEM, which weft-control reads with --trust-anchors. Not "weft-trust-anchors": that is the name weft-control publishes into every namespace, this one included. */}}
{{- define "weft.trustAnchorsSource" -}}
{{- printf "%s-trust-anchors-source" (include "weft.fullname" .) }}
{{- end }}

{{/* The edge gateway's name: Deployment, Service, ServiceAccount, PDB ("weft-gateway" for release "weft"). */}}
{{- define "weft.gateway" -}}
{{- printf "%s-gateway" (include "weft.fullname" .) }}
{{- end }}

{{/* Selector labels of the gateway pods (never change them: selectors are immutable). */}}
{{- define "weft.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ include "weft.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* The SPIFFE ID proxies expect the control plane's certificate to name: its ServiceAccount's, as weft-control computes it from WEFT_NAMESPACE and WEFT_SERVICE_ACCOUNT. */}}
{{- define "weft.controlIdentity" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.mesh.trustDomain .Release.Namespace (include "weft.serviceAccountName" .) }}
{{- end }}
