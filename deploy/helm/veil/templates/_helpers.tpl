{{/* Names and labels. */}}
{{- define "veil.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "veil.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "veil.selectorLabels" -}}
app.kubernetes.io/name: {{ include "veil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: enclave
{{- end -}}

{{- define "veil.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "veil.labels" -}}
{{ include "veil.selectorLabels" . }}
{{ include "veil.commonLabels" . }}
{{- end -}}

{{/* The key-release coordinator's pods (docs/SCALE-OUT.md 2.2). */}}
{{- define "veil.coordinatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "veil.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: coordinator
{{- end -}}

{{- define "veil.coordinatorLabels" -}}
{{ include "veil.coordinatorSelectorLabels" . }}
{{ include "veil.commonLabels" . }}
{{- end -}}

{{- define "veil.coordinatorName" -}}
{{- printf "%s-coordinator" (include "veil.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "veil.manifestConfigMapName" -}}
{{- default (printf "%s-manifest" (include "veil.fullname" .)) .Values.keyRelease.coordinator.manifest.existingConfigMap -}}
{{- end -}}

{{- define "veil.coordinatorPolicyConfigMapName" -}}
{{- default (printf "%s-coordinator-policy" (include "veil.fullname" .)) .Values.keyRelease.coordinatorPolicy.existingConfigMap -}}
{{- end -}}

{{/* True (non-empty) when this release is a replicated deployment: key release + shared state. */}}
{{- define "veil.replicated" -}}
{{- if and .Values.keyRelease.enabled (eq .Values.state.backend "postgres") -}}true{{- end -}}
{{- end -}}

{{/*
What the chart refuses to render: each check fails closed with the reason in one line.
*/}}
{{- define "veil.validate" -}}
{{- $tee := .Values.confidential.tee -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" (toString .Values.image.digest)) -}}
{{- fail "image.digest is required (sha256:<64 hex>): Veil images are pulled by digest, the one the measurement was computed for" -}}
{{- end -}}
{{- if and (eq $tee "simulated") (not .Values.confidential.allowSimulated) -}}
{{- fail "confidential.tee=simulated proves nothing about the hardware: set confidential.allowSimulated=true to deploy it anyway" -}}
{{- end -}}
{{- if and (eq $tee "simulated") .Values.confidential.gpu.enabled -}}
{{- fail "confidential.gpu needs a hardware TEE (sev-snp or tdx): a GPU's evidence is accepted only inside a verified CPU TEE" -}}
{{- end -}}
{{- if and (eq $tee "tdx") (or (not .Values.confidential.tdx.sealingKeySecret) (not .Values.confidential.tdx.collateralConfigMap)) -}}
{{- fail "confidential.tee=tdx needs confidential.tdx.sealingKeySecret and confidential.tdx.collateralConfigMap" -}}
{{- end -}}
{{- if and (not .Values.tenantConfig.existingSecret) (not .Values.tenantConfig.configToml) -}}
{{- fail "tenantConfig: give existingSecret (a Secret with config.toml) or configToml" -}}
{{- end -}}
{{- if and .Values.tenantConfig.existingSecret .Values.tenantConfig.configToml -}}
{{- fail "tenantConfig: give existingSecret or configToml, not both" -}}
{{- end -}}
{{- if and (eq .Values.state.backend "postgres") (not .Values.state.postgres.existingSecret) -}}
{{- fail "state.backend=postgres needs state.postgres.existingSecret (the Secret holding the connection URL)" -}}
{{- end -}}
{{- $kr := .Values.keyRelease -}}
{{- if and (eq .Values.state.backend "postgres") (not $kr.enabled) -}}
{{- fail "state.backend=postgres makes each pod a replica, which takes its keys from the coordinator: set keyRelease.enabled=true (veil serve --state postgres needs --coordinator)" -}}
{{- end -}}
{{- if and $kr.enabled (ne .Values.state.backend "postgres") -}}
{{- fail "keyRelease.enabled needs state.backend=postgres: replicas sharing keys must share the replay guard, privacy-budget ledger and model registry" -}}
{{- end -}}
{{- if $kr.enabled -}}
{{- if eq $tee "tdx" -}}
{{- fail "keyRelease with confidential.tee=tdx: TDX derives no sealing key and veil coordinator takes no key file, so the coordinator could not seal the model-store key" -}}
{{- end -}}
{{- $m := $kr.coordinator.manifest -}}
{{- $inline := or $m.json $m.signatureBase64 $m.ownerKey -}}
{{- if and $m.existingConfigMap $inline -}}
{{- fail "keyRelease.coordinator.manifest: give existingConfigMap or json/signatureBase64/ownerKey, not both" -}}
{{- end -}}
{{- if and (not $m.existingConfigMap) (not (and $m.json $m.signatureBase64 $m.ownerKey)) -}}
{{- fail "keyRelease.coordinator.manifest: give existingConfigMap (manifest.json, manifest.json.sig, owner.pub) or all of json, signatureBase64 and ownerKey" -}}
{{- end -}}
{{- $p := $kr.coordinatorPolicy -}}
{{- if and $p.existingConfigMap $p.policyToml -}}
{{- fail "keyRelease.coordinatorPolicy: give existingConfigMap or policyToml, not both" -}}
{{- end -}}
{{- if and (not $p.existingConfigMap) (not $p.policyToml) -}}
{{- fail "keyRelease.coordinatorPolicy: give existingConfigMap (policy.toml) or policyToml: replicas verify the coordinator's evidence under it before sending anything" -}}
{{- end -}}
{{- if eq (int $kr.coordinator.port) (int .Values.port) -}}
{{- fail "keyRelease.coordinator.port must differ from port" -}}
{{- end -}}
{{- if .Values.tenantConfig.configToml -}}
{{- $cfg := fromToml .Values.tenantConfig.configToml -}}
{{- if hasKey $cfg "Error" -}}
{{- fail (printf "tenantConfig.configToml is not TOML: %s" $cfg.Error) -}}
{{- end -}}
{{- if gt (int (dig "server" "workers" 1 $cfg)) 1 -}}
{{- fail "tenantConfig.configToml: [server] workers must be 1 with state.backend=postgres (a replica is one serving process; scale with replicas instead)" -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (gt (int .Values.replicas) 1) (not (include "veil.replicated" .)) -}}
{{- fail "replicas > 1 needs keyRelease.enabled=true and state.backend=postgres (docs/SCALE-OUT.md 2): without them each replica would keep its own keys, models and privacy budgets" -}}
{{- end -}}
{{- end -}}

{{- define "veil.image" -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- end -}}

{{- define "veil.configSecretName" -}}
{{- default (printf "%s-config" (include "veil.fullname" .)) .Values.tenantConfig.existingSecret -}}
{{- end -}}

{{/* The Kata confidential runtime class for the TEE (and GPU); none for the simulated TEE. */}}
{{/* The coordinator's pod has no GPU: "veil.runtimeClassName" (dict "root" . "gpu" false). */}}
{{- define "veil.runtimeClassName" -}}
{{- $root := .root | default . -}}
{{- $c := $root.Values.confidential -}}
{{- $gpu := ternary $c.gpu.enabled .gpu (not (hasKey . "gpu")) -}}
{{- if $c.runtimeClassName -}}
{{- $c.runtimeClassName -}}
{{- else if ne $c.tee "simulated" -}}
{{- $short := ternary "snp" "tdx" (eq $c.tee "sev-snp") -}}
{{- if $gpu -}}
{{- printf "kata-qemu-nvidia-gpu-%s" $short -}}
{{- else -}}
{{- printf "kata-qemu-%s" $short -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "veil.nodeSelector" -}}
{{- $root := .root | default . -}}
{{- $c := $root.Values.confidential -}}
{{- $gpu := ternary $c.gpu.enabled .gpu (not (hasKey . "gpu")) -}}
{{- $selector := dict -}}
{{- if $c.nodeSelector -}}
{{- $selector = deepCopy $c.nodeSelector -}}
{{- else if eq $c.tee "sev-snp" -}}
{{- $_ := set $selector "feature.node.kubernetes.io/cpu-security.sev.snp.enabled" "true" -}}
{{- else if eq $c.tee "tdx" -}}
{{- $_ := set $selector "feature.node.kubernetes.io/cpu-security.tdx.enabled" "true" -}}
{{- end -}}
{{- if $gpu -}}
{{- $selector = merge $selector (deepCopy $c.gpu.nodeSelector) -}}
{{- end -}}
{{- if $selector -}}
{{- toYaml $selector -}}
{{- end -}}
{{- end -}}

{{/* The probe handler: gRPC health on the serving port, or a TCP connect under TLS. */}}
{{- define "veil.probeHandler" -}}
{{- if .Values.tls.existingSecret -}}
tcpSocket:
  port: grpc
{{- else -}}
grpc:
  port: {{ .Values.port }}
{{- end -}}
{{- end -}}
