{{/* Names ------------------------------------------------------------------------ */}}

{{- define "nodewright.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name; 42 characters leave room for the longest suffix. */}}
{{- define "nodewright.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "nodewright.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "nodewright.serviceName" -}}
{{- include "nodewright.fullname" . }}
{{- end }}

{{- define "nodewright.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nodewright.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name shared by the MutatingWebhookConfiguration and the ValidatingWebhookConfiguration. */}}
{{- define "nodewright.webhookName" -}}
{{- default (include "nodewright.fullname" .) .Values.webhooks.name }}
{{- end }}

{{/* Serving certificate Secret: written by nodewright (self-managed) or cert-manager. */}}
{{- define "nodewright.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "provided" }}
{{- .Values.certificates.provided.secretName }}
{{- else }}
{{- printf "%s-tls" (include "nodewright.fullname" .) }}
{{- end }}
{{- end }}

{{- define "nodewright.extenderClientSecretName" -}}
{{- if eq .Values.certificates.mode "provided" }}
{{- .Values.extender.clientAuth.provided.clientSecretName }}
{{- else }}
{{- printf "%s-extender-client" (include "nodewright.fullname" .) }}
{{- end }}
{{- end }}

{{- define "nodewright.schedulerFullname" -}}
{{- printf "%s-scheduler" (include "nodewright.fullname" .) }}
{{- end }}

{{- define "nodewright.schedulerLeaseName" -}}
{{- default .Values.scheduler.name .Values.scheduler.leaderElection.leaseName }}
{{- end }}

{{/* Lease of nodewright's provisioner (src/cluster/leader.rs). */}}
{{- define "nodewright.provisionerLeaseName" -}}
nodewright-provisioner
{{- end }}

{{/* Labels ----------------------------------------------------------------------- */}}

{{- define "nodewright.labels" -}}
helm.sh/chart: {{ include "nodewright.chart" . }}
app.kubernetes.io/name: {{ include "nodewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: nodewright
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* nodewright's own pods (controller) and the second scheduler's never share selectors. */}}
{{- define "nodewright.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nodewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "nodewright.schedulerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "nodewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scheduler
{{- end }}

{{/* Images ----------------------------------------------------------------------- */}}

{{- define "nodewright.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* kube-scheduler's tag: the cluster's version without a vendor suffix (v1.31.2-eks-7f9249a -> v1.31.2). */}}
{{- define "nodewright.schedulerImage" -}}
{{- $tag := .Values.scheduler.image.tag }}
{{- if not $tag }}
{{- $tag = regexFind "^v?[0-9]+\\.[0-9]+\\.[0-9]+" .Capabilities.KubeVersion.Version }}
{{- if not (hasPrefix "v" $tag) }}{{ $tag = printf "v%s" $tag }}{{ end }}
{{- end }}
{{- printf "%s/%s:%s" .Values.scheduler.image.registry .Values.scheduler.image.repository $tag }}
{{- end }}

{{/* Certificates ----------------------------------------------------------------- */}}

{{/* Mount point of the serving Secret (cert-manager and provided modes). */}}
{{- define "nodewright.tlsDir" -}}
/etc/nodewright/tls
{{- end }}

{{/* true when nodewright itself keeps the webhook configurations' caBundle current. */}}
{{- define "nodewright.managesCaBundle" -}}
{{- if or .Values.webhooks.mutating.enabled .Values.webhooks.validating.enabled }}
{{- if eq .Values.certificates.mode "self-managed" }}true
{{- else if and (eq .Values.certificates.mode "provided") (not .Values.certificates.provided.caBundle) }}true
{{- end }}
{{- end }}
{{- end }}

{{/* The cert-manager Certificate the webhooks take their CA from. */}}
{{- define "nodewright.certManagerIssuerRef" -}}
{{- if .Values.certificates.certManager.issuerRef }}
{{- toYaml .Values.certificates.certManager.issuerRef }}
{{- else }}
name: {{ include "nodewright.fullname" . }}-ca
kind: Issuer
group: cert-manager.io
{{- end }}
{{- end }}

{{/*
caBundle of a webhook configuration. cert-manager mode: none (cainjector writes it). provided
mode with an explicit caBundle: that. Otherwise nodewright writes it; keep what is in the
cluster so an upgrade does not blank it (lookup is empty offline and on first install, and
nodewright repairs the field anyway).
*/}}
{{- define "nodewright.caBundle" -}}
{{- $ctx := index . 0 }}
{{- $kind := index . 1 }}
{{- if eq $ctx.Values.certificates.mode "provided" }}
{{- $ctx.Values.certificates.provided.caBundle }}
{{- end }}
{{- if eq (include "nodewright.managesCaBundle" $ctx) "true" }}
{{- $live := lookup "admissionregistration.k8s.io/v1" $kind "" (include "nodewright.webhookName" $ctx) }}
{{- $bundles := list }}
{{- range (dig "webhooks" list $live) }}
{{- with (dig "clientConfig" "caBundle" "" .) }}{{ $bundles = append $bundles . }}{{ end }}
{{- end }}
{{- if $bundles }}{{ first $bundles }}{{ end }}
{{- end }}
{{- end }}

{{/* Webhook selectors -------------------------------------------------------------- */}}

{{/* Namespaces a webhook is never called for: the control plane and nodewright's own. */}}
{{- define "nodewright.excludedNamespaces" -}}
{{- $ns := list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace }}
{{- $ns = concat $ns .Values.webhooks.excludedNamespaces }}
{{- toJson (uniq $ns) }}
{{- end }}

{{/*
A namespaceSelector: the user's selector ANDed with the exclusions. Arguments: context, user
selector, extra names to exclude, names to include (empty: all), whether namespaces labelled
nodewright.io/skip=true opt out.
*/}}
{{- define "nodewright.namespaceSelector" -}}
{{- $ctx := index . 0 }}
{{- $user := index . 1 }}
{{- $exclude := concat (include "nodewright.excludedNamespaces" $ctx | fromJsonArray) (index . 2) | uniq }}
{{- $include := index . 3 }}
{{- $skip := index . 4 }}
{{- with (get $user "matchLabels") }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values: {{ toJson $exclude }}
  {{- if $include }}
  - key: kubernetes.io/metadata.name
    operator: In
    values: {{ toJson $include }}
  {{- end }}
  {{- if $skip }}
  - key: nodewright.io/skip
    operator: NotIn
    values: ["true"]
  {{- end }}
  {{- with (get $user "matchExpressions") }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{- define "nodewright.objectSelector" -}}
{{- with (get . "matchLabels") }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- end }}
matchExpressions:
  - key: nodewright.io/skip
    operator: NotIn
    values: ["true"]
  {{- with (get . "matchExpressions") }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Pod scheduling ---------------------------------------------------------------- */}}

{{/* One replica per node (a node's loss takes one webhook replica), spread over zones when possible. */}}
{{- define "nodewright.topologySpread" -}}
{{- $ctx := index . 0 }}
{{- $selector := index . 1 }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: DoNotSchedule
  labelSelector:
    matchLabels:
      {{- $selector | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- $selector | nindent 6 }}
  matchLabelKeys: [pod-template-hash]
{{- end }}

{{/* Config --------------------------------------------------------------------------- */}}

{{/* The Policy spec: values with empty entries dropped, clusterName and schedulerName defaulted. */}}
{{- define "nodewright.policySpec" -}}
{{- $spec := dict }}
{{- range $key, $value := .Values.config.policy }}
{{- if not (or (kindIs "invalid" $value) (and (or (kindIs "string" $value) (kindIs "map" $value) (kindIs "slice" $value)) (empty $value))) }}
{{- $_ := set $spec $key $value }}
{{- end }}
{{- end }}
{{- if and .Values.scheduler.enabled (not (get $spec "schedulerName")) }}
{{- $_ := set $spec "schedulerName" .Values.scheduler.name }}
{{- end }}
{{- if .Values.clusterName }}
{{- $provisioning := deepCopy (default dict (get $spec "provisioning")) }}
{{- if not (get $provisioning "clusterName") }}
{{- $_ := set $provisioning "clusterName" .Values.clusterName }}
{{- end }}
{{- $_ := set $spec "provisioning" $provisioning }}
{{- end }}
{{- toYaml $spec }}
{{- end }}

{{/* nodewright's config file (multi-document YAML), before tpl. */}}
{{- define "nodewright.configTemplate" -}}
{{- if .Values.config.file }}
{{- .Values.config.file }}
{{- else }}
# nodewright config, generated by the nodewright Helm chart from its values (config.*).
# nodewright reloads it when the ConfigMap changes; a bad edit keeps the last good config.
{{- range $name, $spec := .Values.config.nodePools }}
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: {{ $name }}
spec:
  {{- toYaml $spec | nindent 2 }}
{{- end }}
{{- range $name, $spec := .Values.config.ec2NodeClasses }}
---
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata:
  name: {{ $name }}
spec:
  {{- toYaml $spec | nindent 2 }}
{{- end }}
---
apiVersion: nodewright.io/v1alpha1
kind: Policy
metadata:
  name: default
spec:
  {{- include "nodewright.policySpec" . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "nodewright.config" -}}
{{- tpl (include "nodewright.configTemplate" .) . }}
{{- end }}

{{/* Namespaces the narrowed quota webhook is called for. */}}
{{- define "nodewright.quotaNamespaces" -}}
{{- $names := .Values.webhooks.validating.quotaNamespaces }}
{{- if not .Values.config.file }}
{{- range .Values.config.policy.quotas }}
{{- if and (get . "namespaceSelector") (not $.Values.webhooks.validating.quotaNamespaces) }}
{{- fail (printf "webhooks.validating.narrowToQuotaNamespaces: quota %q selects namespaces by label, which a webhook namespaceSelector of names cannot follow; list the namespaces it selects in webhooks.validating.quotaNamespaces" (get . "name")) }}
{{- end }}
{{- $names = concat $names (default list (get . "namespaces")) }}
{{- end }}
{{- end }}
{{- if not $names }}
{{- fail "webhooks.validating.narrowToQuotaNamespaces: no quota names a namespace (config.policy.quotas[].namespaces, webhooks.validating.quotaNamespaces)" }}
{{- end }}
{{- toJson (uniq $names) }}
{{- end }}

{{/* Scheduler ------------------------------------------------------------------------ */}}

{{/* The extenders stanza of a KubeSchedulerConfiguration (argument: context). */}}
{{- define "nodewright.extenderStanza" -}}
{{- $e := .Values.extender }}
- urlPrefix: https://{{ include "nodewright.serviceName" . }}.{{ .Release.Namespace }}.svc:{{ .Values.service.port }}/scheduler
  filterVerb: filter
  prioritizeVerb: prioritize
  weight: {{ $e.weight }}
  # kube-scheduler sends node names only; nodewright judges them from its own node cache
  # (and avoids the upstream bug where full-node calls score every node as idle).
  nodeCacheCapable: {{ $e.nodeCacheCapable }}
  enableHTTPS: true
  tlsConfig:
    # The CA that signed nodewright's serving certificate (ca.crt of its serving Secret).
    caFile: /etc/kubernetes/nodewright/ca/ca.crt
    {{- if $e.clientAuth.enabled }}
    # The client certificate nodewright requires on /scheduler/* (extender.clientAuth).
    certFile: /etc/kubernetes/nodewright/client/tls.crt
    keyFile: /etc/kubernetes/nodewright/client/tls.key
    {{- end }}
  httpTimeout: {{ $e.httpTimeout }}
  # true: if nodewright is down or slow, pods are still scheduled by the in-tree plugins, so a
  # nodewright outage never stops scheduling; the cost is that, meanwhile, new nodes reserved for
  # their pods can be taken by other pods (those pods are planned again by the next batch).
  # false: reservations are strict, but scheduling of this profile's pods stops while nodewright
  # is unreachable: it couples scheduling to nodewright's availability.
  ignorable: {{ $e.ignorable }}
{{- end }}

{{- define "nodewright.schedulerConfig" -}}
{{- $s := .Values.scheduler }}
{{- $profile := merge (dict "schedulerName" $s.name) (deepCopy $s.profile) -}}
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
leaderElection:
  leaderElect: true
  resourceLock: leases
  resourceNamespace: {{ .Release.Namespace }}
  resourceName: {{ include "nodewright.schedulerLeaseName" . }}
  leaseDuration: {{ $s.leaderElection.leaseDuration }}
  renewDeadline: {{ $s.leaderElection.renewDeadline }}
  retryPeriod: {{ $s.leaderElection.retryPeriod }}
profiles:
  {{- toYaml (list $profile) | nindent 2 }}
extenders:
  {{- include "nodewright.extenderStanza" . | trim | nindent 2 }}
{{- end }}
