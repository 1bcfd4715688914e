"""End to end against a real gRPC server on 127.0.0.1 with real ONNX Runtime and real crypto.

Every bad input checks the exact status and message, then that the service still serves and
that nothing half-written was stored.
"""

from __future__ import annotations

import asyncio
import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from enclave_support import TENANT_KEYS, Served, mlp_model, start, write_config
from onnx import TensorProto, helper

from veil.sdk import (
    AsyncClient,
    AttestationError,
    AttestationFailure,
    AttestationPolicy,
    RemoteError,
    Suite,
    TlsOptions,
)
from veil.sdk._core import ClientCore, remote_error
from veil.sdk.protocol import Method
from veil.sdk.sealing import SEALED_ERROR_KEY, clear_message
from veil.v1 import (
    common_pb2,
    inference_pb2,
    inference_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)

warnings.filterwarnings("ignore", message="trusting a test root")
X = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)


def _remote(exc: pytest.ExceptionInfo[RemoteError]) -> tuple[str, str, str]:
    return exc.value.code, exc.value.reason, exc.value.detail


# -- the happy path ----------------------------------------------------------------------------


def test_upload_and_infer_match_in_process_onnxruntime_bit_for_bit(served: Served) -> None:
    model = mlp_model()
    with served.client() as client:
        enclave = client.attest()
        assert enclave.measurement == served.enclave.measurement.hex()
        info = client.upload_model(model, "scorer")
        assert (info.ref, info.version) == ("scorer@1", 1)
        assert [t.name for t in info.inputs] == ["x"]
        out = client.infer("scorer", {"x": X})
    expected = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": X})
    assert set(out) == {"logits", "probs"}
    assert out["logits"].dtype == np.float32
    assert out["logits"].tobytes() == expected[0].tobytes()
    assert out["probs"].tobytes() == expected[1].tobytes()


def test_model_is_encrypted_at_rest(served: Served) -> None:
    model = mlp_model()
    with served.client() as client:
        client.upload_model(model, "scorer")
    blobs = [p for p in served.stored_files() if p.name.endswith(".onnx.enc")]
    assert len(blobs) == 1
    stored = blobs[0].read_bytes()
    assert model not in stored
    assert model[:64] not in stored
    weights = onnx.load_model_from_string(model).graph.initializer[0].raw_data[:32]
    assert weights not in stored


def test_versions_list_delete_and_numbers_are_never_reused(served: Served) -> None:
    with served.client() as client:
        assert client.upload_model(mlp_model(seed=1), "m").ref == "m@1"
        assert client.upload_model(mlp_model(seed=2), "m").ref == "m@2"
        assert [m.ref for m in client.list_models()] == ["m@1", "m@2"]
        assert [m.ref for m in client.delete_model("m@2")] == ["m@2"]
        assert client.upload_model(mlp_model(seed=3), "m").ref == "m@3"
        assert client.infer("m@1", {"x": X})["probs"].shape == (5, 3)
        with pytest.raises(RemoteError) as err:
            client.infer("m@2", {"x": X})
        assert _remote(err) == ("NOT_FOUND", "not-found", "model m@2 not found")


def test_output_selection(served: Served) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        assert set(client.infer("m", {"x": X}, output_names=["probs"])) == {"probs"}
        with pytest.raises(RemoteError) as err:
            client.infer("m", {"x": X}, output_names=["nope"])
        assert err.value.code == "INVALID_ARGUMENT"
        assert "unknown output(s) ['nope']" in err.value.detail


def test_attestation_is_cached_until_it_expires(served: Served) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        client.infer("m", {"x": X})
        client.infer("m", {"x": X})
    assert served.calls.methods.count("/veil.v1.AttestationService/GetAttestation") == 1


def test_post_quantum_hybrid_suite(served: Served) -> None:
    with served.client(suite=Suite.MLKEM768X25519_SHA256_AES256GCM) as client:
        assert Suite.MLKEM768X25519_SHA256_AES256GCM in client.attest().claims.keys
        client.upload_model(mlp_model(), "pq")
        assert client.infer("pq", {"x": X})["probs"].shape == (5, 3)


def test_async_client_shares_behaviour(served: Served) -> None:
    async def main() -> dict[str, np.ndarray]:
        async with AsyncClient(
            served.address, api_key=TENANT_KEYS["default"], policy=served.policy()
        ) as client:
            await client.upload_model(mlp_model(), "a")
            assert [m.ref for m in await client.list_models()] == ["a@1"]
            return await client.infer("a", {"x": X})

    out = asyncio.run(main())
    expected = ort.InferenceSession(mlp_model(), providers=["CPUExecutionProvider"]).run(
        ["probs"], {"x": X}
    )[0]
    assert out["probs"].tobytes() == expected.tobytes()


def test_key_rotation_makes_the_client_reattest_once(served: Served) -> None:
    with served.client() as client:
        first = client.attest().key_id
        client.upload_model(mlp_model(), "m")
        served.enclave.rotate_keys()
        served.enclave.rotate_keys()  # the attested epoch is now gone entirely
        client.infer("m", {"x": X})
        assert client.attest().key_id != first
    assert served.calls.methods.count("/veil.v1.AttestationService/GetAttestation") == 2


# -- fail closed -------------------------------------------------------------------------------


def test_untrusted_root_sends_nothing(served: Served, tmp_path: Path) -> None:
    from veil.enclave.tee._simulated import SimulatedSnp

    other_root = SimulatedSnp.load_or_create(tmp_path).root_pem
    with served.client(policy=AttestationPolicy.simulated_for_tests(other_root)) as client:
        with pytest.raises(AttestationError) as err:
            client.upload_model(mlp_model(), "m")
        assert err.value.reason is AttestationFailure.UNTRUSTED_ROOT
        with pytest.raises(AttestationError):
            client.infer("m", {"x": X})
    assert set(served.calls.methods) == {"/veil.v1.AttestationService/GetAttestation"}
    assert served.stored_files() == []


def test_wrong_measurement_sends_nothing(served: Served) -> None:
    policy = served.policy(measurements=[bytes(48)])
    with served.client(policy=policy) as client, pytest.raises(AttestationError) as err:
        client.infer("m", {"x": X})
    assert err.value.reason is AttestationFailure.MEASUREMENT_MISMATCH
    assert set(served.calls.methods) == {"/veil.v1.AttestationService/GetAttestation"}


def test_production_policy_rejects_simulated_enclave(served: Served) -> None:
    policy = AttestationPolicy.production(allow_any_measurement=True)
    with (
        served.client(policy=policy) as client,
        pytest.raises(AttestationError, match="untrusted_root"),
    ):
        client.list_models()
    assert served.calls.methods == ["/veil.v1.AttestationService/GetAttestation"]


# -- bad input: precise status, service keeps serving, nothing half-written ----------------------


def _raw_infer(served: Served, request: common_pb2.SealedRequest) -> None:
    with grpc.insecure_channel(served.address) as channel:
        inference_pb2_grpc.InferenceServiceStub(channel).Infer(request, timeout=10)


def _sealed_infer(client_core: ClientCore, served: Served) -> common_pb2.SealedRequest:
    with served.client() as client:
        enclave = client.attest()
    request = ClientCore.infer_request("m", {"x": X}, None)
    return client_core.seal(enclave, Method.INFER, request).request


def _core(served: Served, **kw: object) -> ClientCore:
    return ClientCore(
        tenant="default", api_key=TENANT_KEYS["default"], policy=served.policy(), **kw
    )  # type: ignore[arg-type]


def test_replayed_request_is_refused(served: Served) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
    request = _sealed_infer(_core(served), served)
    _raw_infer(served, request)
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, request)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert err.value.details() == "request id was already used: replay refused"
    assert ("veil-reason", "replay") in tuple(err.value.trailing_metadata())
    served.assert_healthy()


def test_request_outside_time_window_is_refused(served: Served) -> None:
    late = _core(served, clock=lambda: datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, _sealed_infer(late, served))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "from the enclave clock (window ±120 s)" in err.value.details()
    served.assert_healthy()


@pytest.mark.parametrize(
    "where", ["sealed-start", "sealed-end", "tenant", "request_id", "timestamp"]
)
def test_tampered_request_is_refused(served: Served, where: str) -> None:
    request = _sealed_infer(_core(served), served)
    if where == "sealed-start":
        request.sealed = bytes([request.sealed[0] ^ 1]) + request.sealed[1:]
    elif where == "sealed-end":
        request.sealed = request.sealed[:-1] + bytes([request.sealed[-1] ^ 1])
    elif where == "tenant":
        request.tenant = "acme"
    elif where == "request_id":
        request.request_id = bytes(16)
    else:
        request.timestamp_ms += 1
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "sealed request could not be opened"
    served.assert_healthy()


def test_truncated_ciphertext_is_refused(served: Served) -> None:
    request = _sealed_infer(_core(served), served)
    request.sealed = request.sealed[:40]
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, request)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "sealed request could not be opened",
    )
    served.assert_healthy()


def test_request_sealed_to_the_wrong_key_is_refused(served: Served) -> None:
    with served.client() as client:
        enclave = client.attest()
    wrong = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    forged = replace(
        enclave, claims=replace(enclave.claims, keys={Suite.X25519_SHA256_AES256GCM: wrong})
    )
    request = (
        _core(served)
        .seal(forged, Method.INFER, ClientCore.infer_request("m", {"x": X}, None))
        .request
    )
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, request)
    assert (err.value.code(), err.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "sealed request could not be opened",
    )


def test_request_for_unknown_key_epoch_says_reattest(served: Served) -> None:
    request = _sealed_infer(_core(served), served)
    request.claims_digest = bytes(32)
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, request)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert ("veil-reason", "key-rotated") in tuple(err.value.trailing_metadata())


def test_unsupported_protocol_version_and_suite(served: Served) -> None:
    for field, value, message in (
        ("version", 9, "protocol version 9 is not supported (expected 1)"),
        ("suite", 7, "sealing suite 7 is not supported"),
    ):
        request = _sealed_infer(_core(served), served)
        setattr(request, field, value)
        with pytest.raises(grpc.RpcError) as err:
            _raw_infer(served, request)
        assert (err.value.code(), err.value.details()) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
        )


def test_wrong_api_key_and_unknown_tenant_are_unauthenticated(served: Served) -> None:
    with served.client(api_key="not-the-key") as client, pytest.raises(RemoteError) as err:
        client.list_models()
    assert _remote(err) == (
        "UNAUTHENTICATED",
        "unauthenticated",
        "invalid API key or unknown tenant",  # the two are not told apart
    )
    with served.client(api_key="whatever", tenant="default") as client:
        client._core.tenant = "ghost"
        with pytest.raises(RemoteError) as err:
            client.list_models()
    assert _remote(err) == (
        "UNAUTHENTICATED",
        "unauthenticated",
        "invalid API key or unknown tenant",  # the two are not told apart
    )
    served.assert_healthy()


def test_tenants_see_only_their_own_models(served: Served) -> None:
    with served.client("default") as client:
        client.upload_model(mlp_model(), "private")
    with served.client("acme") as other:
        assert other.list_models() == []
        with pytest.raises(RemoteError) as err:
            other.infer("private", {"x": X})
        assert _remote(err) == ("NOT_FOUND", "not-found", "model 'private' not found")
        with pytest.raises(RemoteError):
            other.delete_model("private")
    with served.client("default") as client:
        assert [m.ref for m in client.list_models()] == ["private@1"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"x": X[:, :3]}, "input 'x' has shape [5, 3], model expects ['?', 4]"),
        ({"x": X.astype(np.float64)}, "input 'x' is float64, model expects float32"),
        ({"x": X[0]}, "input 'x' has shape [4], model expects ['?', 4]"),
        ({"y": X}, "model inputs are ['x']; missing ['x'], unexpected ['y']"),
        ({"x": X, "z": X}, "model inputs are ['x']; missing [], unexpected ['z']"),
    ],
)
def test_shape_dtype_and_name_mismatch(
    served: Served, inputs: dict[str, np.ndarray], message: str
) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        with pytest.raises(RemoteError) as err:
            client.infer("m", inputs)
    assert _remote(err) == ("INVALID_ARGUMENT", "invalid-input", message)
    served.assert_healthy()


def test_malformed_tensor_bytes(served: Served) -> None:
    with served.client() as client:
        client.upload_model(mlp_model(), "m")
        enclave = client.attest()
    request = inference_pb2.InferRequest(model="m")
    request.inputs["x"].CopyFrom(common_pb2.Tensor(dtype="float32", shape=[2, 4], data=b"\0" * 31))
    call = _core(served).seal(enclave, Method.INFER, request)
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, call.request)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "malformed request"  # in clear: the reason's fixed message
    assert remote_error(err.value, call).detail == (  # sealed: the precise one
        "tensor data is 31 bytes, shape [2, 4] of float32 needs 32"
    )
    request.inputs["x"].CopyFrom(common_pb2.Tensor(dtype="object", shape=[1], data=b"\0" * 8))
    call = _core(served).seal(enclave, Method.INFER, request)
    with pytest.raises(grpc.RpcError) as err:
        _raw_infer(served, call.request)
    assert remote_error(err.value, call).detail == "unsupported tensor dtype 'object'"
    served.assert_healthy()


# -- uploads --------------------------------------------------------------------------------------


def _upload_raw(served: Served, mutate) -> RemoteError:  # type: ignore[no-untyped-def]
    """The refusal as the SDK raises it: the detail opened from the sealed error trailer."""
    with served.client() as client:
        enclave = client.attest()
    core = _core(served, chunk_size=64)
    call, messages = core.upload(enclave, mlp_model(), "m", lambda n: None)
    stream = mutate(list(messages))
    with grpc.insecure_channel(served.address) as channel, pytest.raises(grpc.RpcError) as err:
        models_pb2_grpc.ModelServiceStub(channel).UploadModel(iter(stream), timeout=10)
    assert served.stored_files() == []
    served.assert_healthy()
    remote = remote_error(err.value, call)
    if any(key == SEALED_ERROR_KEY for key, _ in err.value.trailing_metadata()):
        assert err.value.details() == clear_message(remote.reason)  # nothing more in clear
    return remote


def test_upload_without_final_chunk_is_truncated(served: Served) -> None:
    err = _upload_raw(served, lambda msgs: msgs[:-1])
    assert err.code == "INVALID_ARGUMENT"
    assert "upload truncated: stream ended after" in err.detail


def test_upload_with_reordered_chunks_is_refused(served: Served) -> None:
    err = _upload_raw(served, lambda msgs: [msgs[0], msgs[2], msgs[1], *msgs[3:]])
    assert (err.code, err.detail) == ("INVALID_ARGUMENT", "chunk 1 arrived, expected 0")


def test_upload_with_relabelled_chunk_is_refused(served: Served) -> None:
    def relabel(msgs: list[models_pb2.UploadMessage]) -> list[models_pb2.UploadMessage]:
        msgs[2].chunk.seq, msgs[1].chunk.seq = 0, 1
        msgs[1], msgs[2] = msgs[2], msgs[1]
        return msgs

    err = _upload_raw(served, relabel)
    assert (err.code, err.detail) == ("INVALID_ARGUMENT", "model chunk could not be opened")


def test_upload_with_early_final_flag_is_refused(served: Served) -> None:
    def early_final(msgs: list[models_pb2.UploadMessage]) -> list[models_pb2.UploadMessage]:
        msgs[1].chunk.final = True
        return msgs[:2]

    err = _upload_raw(served, early_final)
    assert (err.code, err.detail) == ("INVALID_ARGUMENT", "model chunk could not be opened")


def test_upload_without_header_is_refused(served: Served) -> None:
    err = _upload_raw(served, lambda msgs: msgs[1:])
    assert (err.code, err.detail) == ("INVALID_ARGUMENT", "upload must start with a sealed header")


def test_upload_replay_is_refused(served: Served) -> None:
    with served.client() as client:
        enclave = client.attest()
    _, messages = _core(served).upload(enclave, mlp_model(), "m", lambda n: None)
    stream = list(messages)
    with grpc.insecure_channel(served.address) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        stub.UploadModel(iter(stream), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            stub.UploadModel(iter(stream), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert len([p for p in served.stored_files() if p.suffix == ".json"]) == 1


def _external_data_model() -> bytes:
    tensor = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4, 3])
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [tensor],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _custom_domain_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Evil", ["x"], ["y"], domain="com.attacker")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.attacker", 1)]
    return helper.make_model(graph, opset_imports=opsets).SerializeToString()


def _unknown_op_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (b"\x08\x07garbage that is not a model" * 3, "upload is not a valid ONNX model"),
        (
            _external_data_model(),
            "ONNX tensor 'W' references external data; upload a self-contained model",
        ),
        (_custom_domain_model(), "ONNX operator domain 'com.attacker' is not allowed"),
        (_unknown_op_model(), "ONNX checker rejected the model"),
    ],
    ids=["garbage", "external-data", "custom-domain", "unknown-op"],
)
def test_hostile_or_malformed_onnx_is_refused(served: Served, model: bytes, message: str) -> None:
    with served.client() as client, pytest.raises(RemoteError) as err:
        client.upload_model(model, "bad")
    assert err.value.code == "INVALID_ARGUMENT"
    assert err.value.detail.startswith(message)
    assert served.stored_files() == []
    served.assert_healthy()


def test_bad_model_names_are_refused(served: Served) -> None:
    with served.client() as client:
        for name, message in (
            ("../escape", "model name '../escape' is not"),
            ("m@3", "upload names a model, not a version"),
        ):
            with pytest.raises(RemoteError) as err:
                client.upload_model(mlp_model(), name)
            assert err.value.code == "INVALID_ARGUMENT"
            assert err.value.detail.startswith(message)
    assert served.stored_files() == []


def test_oversized_model_and_message(tmp_path: Path, tee_template: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    write_config(data, extra_server="max_model_bytes = 1000\nmax_message_bytes = 100000")
    small = start(data)
    try:
        with small.client() as client:
            with pytest.raises(RemoteError) as err:
                client.upload_model(mlp_model(inputs=64, hidden=64), "big")
            assert err.value.code == "RESOURCE_EXHAUSTED"
            assert err.value.reason == "too-large"
            assert err.value.detail.endswith("limit is 1000")
            client.upload_model(mlp_model(), "ok")
            with pytest.raises(RemoteError) as err:
                client.infer("ok", {"x": np.zeros((20_000, 4), np.float32)})
            assert _remote(err) == (
                "RESOURCE_EXHAUSTED",
                "too-large",
                "inputs are 320000 bytes, limit is 100000",
            )
            with pytest.raises(RemoteError) as err:  # beyond gRPC's own message limit
                client.infer("ok", {"x": np.zeros((300_000, 4), np.float32)})
            assert err.value.code == "RESOURCE_EXHAUSTED"
        assert len([p for p in small.stored_files() if p.suffix == ".json"]) == 1
        small.assert_healthy()
    finally:
        small.running.stop(grace=None)


# -- channel security -------------------------------------------------------------------------


def _tls_files(folder: Path) -> dict[str, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def cert(
        name: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        ca: bool,
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = issuer or (subject, key)
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("veil test ca", ca_key, None, True)
    out = {}
    for role in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = cert(
            "localhost" if role == "server" else "tenant-client", key, (ca.subject, ca_key), False
        )
        out[f"{role}.pem"] = leaf.public_bytes(serialization.Encoding.PEM)
        out[f"{role}.key"] = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    out["ca.pem"] = ca.public_bytes(serialization.Encoding.PEM)
    paths = {}
    for name, blob in out.items():
        (folder / name).write_bytes(blob)
        paths[name] = folder / name
    return paths


@pytest.mark.parametrize("mutual", [False, True], ids=["tls", "mtls"])
def test_tls_and_mutual_tls_channels(tmp_path: Path, tee_template: Path, mutual: bool) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tee_template, data / "simulated-tee")
    files = _tls_files(data)
    write_config(data)
    tls = '\n[tls]\ncert = "server.pem"\nkey = "server.key"\n' + (
        'client_ca = "ca.pem"\n' if mutual else ""
    )
    (data / "config.toml").write_text((data / "config.toml").read_text() + tls)
    s = start(data)
    try:
        opts = TlsOptions(
            root_certificates=files["ca.pem"].read_bytes(),
            client_certificate=files["client.pem"].read_bytes() if mutual else None,
            client_key=files["client.key"].read_bytes() if mutual else None,
        )
        target = f"localhost:{s.running.port}"
        from veil.sdk import Client

        with Client(target, api_key=TENANT_KEYS["default"], policy=s.policy(), tls=opts) as client:
            client.upload_model(mlp_model(), "m")
            assert client.infer("m", {"x": X})["probs"].shape == (5, 3)
        if mutual:  # without a client certificate the handshake fails
            with (
                Client(
                    target,
                    api_key=TENANT_KEYS["default"],
                    policy=s.policy(),
                    tls=TlsOptions(root_certificates=files["ca.pem"].read_bytes()),
                    timeout=5,
                ) as client,
                pytest.raises(RemoteError) as err,
            ):
                client.attest()
            assert err.value.code == "UNAVAILABLE"
    finally:
        s.running.stop(grace=None)
