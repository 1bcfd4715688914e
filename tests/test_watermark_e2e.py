"""Embed -> verify on real (small) ONNX models, robustness of the locator, reports and the CLI."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import helper, numpy_helper

from veil.sdk.errors import WatermarkError
from veil.watermark import (
    LayerLocator,
    VerificationReport,
    WatermarkKey,
    WatermarkPlan,
    WatermarkRegularizer,
    embed_onnx,
    onnx_predictor,
    verify,
    verify_trigger,
    weight_layers,
)
from veil.watermark._claim import public_key_bytes
from veil.watermark._keys import message_bits
from veil.watermark._locate import locate
from veil.watermark._models import SmallCNN, SmallMLP, accuracy, load_digits, to_onnx, train
from veil.watermark._verify import mark_matches
from veil.watermark.cli import main

NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Marked:
    original: bytes
    marked: bytes
    claim: Any
    key: WatermarkKey
    owner: Ed25519PrivateKey
    x_test: np.ndarray
    y_test: np.ndarray
    base_accuracy: float


def _marked(image: bool, seed: int) -> Marked:
    torch.set_num_threads(1)
    data = load_digits().shaped(image)
    torch.manual_seed(seed)
    model = train(SmallCNN() if image else SmallMLP(), data.x_train, data.y_train, epochs=12)
    original = to_onnx(model)
    owner = Ed25519PrivateKey.from_private_bytes(bytes([seed + 1]) * 32)
    key = WatermarkKey(bytes([seed + 2]) * 32, bytes([seed + 3]) * 32)
    result = embed_onnx(
        original, owner_key=owner, key=key, x=data.x_train, y=data.y_train, now=NOW, epochs=12
    )
    return Marked(original, result.model, result.claim, key, owner, data.x_test, data.y_test,
                  accuracy(model, data.x_test, data.y_test))  # fmt: skip


@pytest.fixture(scope="module")
def mlp() -> Marked:
    return _marked(image=False, seed=0)


@pytest.fixture(scope="module")
def cnn() -> Marked:
    return _marked(image=True, seed=1)


def _accuracy_onnx(model: bytes, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(onnx_predictor(model)(x).argmax(axis=1) == y))


def _quantize(model: bytes, tmp_path: Path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(model)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst.read_bytes()


# --- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_embed_then_verify_detects_with_tiny_p_value(name: str, request: Any) -> None:
    m: Marked = request.getfixturevalue(name)
    verdict = verify(m.marked, m.claim, m.key)
    assert verdict.detected
    assert verdict.p_value < 1e-9
    assert verdict.matches == m.claim.n_bits and verdict.bit_error_rate == 0.0
    # Accuracy is kept (the benchmark measures the drop precisely; this bound is loose).
    assert _accuracy_onnx(m.marked, m.x_test, m.y_test) >= m.base_accuracy - 0.02


def test_embedding_changes_only_initializer_values(mlp: Marked) -> None:
    before, after = onnx.load_from_string(mlp.original), onnx.load_from_string(mlp.marked)
    assert [n.SerializeToString() for n in before.graph.node] == [
        n.SerializeToString() for n in after.graph.node
    ]
    assert [i.name for i in before.graph.initializer] == [i.name for i in after.graph.initializer]
    assert before.graph.initializer[0].raw_data != after.graph.initializer[0].raw_data


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_unmarked_model_is_not_detected(name: str, request: Any) -> None:
    m: Marked = request.getfixturevalue(name)
    verdict = verify(m.original, m.claim, m.key)
    assert not verdict.detected
    assert verdict.p_value > 1e-6


def test_trigger_set_detects_marked_and_not_random_answers(mlp: Marked) -> None:
    black_box = verify_trigger(onnx_predictor(mlp.marked), mlp.claim, mlp.key)
    assert black_box.detected and black_box.chance == 0.1
    rng = np.random.default_rng(0)
    guessing = verify_trigger(lambda x: rng.integers(0, 10, len(x)), mlp.claim, mlp.key)
    assert not guessing.detected


# --- failure modes -----------------------------------------------------------------------------


def test_wrong_key_is_rejected(mlp: Marked) -> None:
    with pytest.raises(WatermarkError, match="commitment"):
        verify(mlp.marked, mlp.claim, WatermarkKey(bytes(32), bytes(32)))
    with pytest.raises(WatermarkError, match="commitment"):
        verify_trigger(onnx_predictor(mlp.marked), mlp.claim, WatermarkKey(bytes(32), bytes(32)))


def test_wrong_owner_is_not_detected(mlp: Marked) -> None:
    # Bob signs a valid claim over the same key and layer: his message bits are not in the model.
    bob = Ed25519PrivateKey.generate()
    plan = WatermarkPlan(mlp.key, public_key_bytes(bob.public_key()), mlp.claim.layer)
    bobs_claim = plan.claim(bob, trigger=None, now=NOW)
    assert not verify(mlp.marked, bobs_claim, mlp.key).detected


def test_tampered_claim_signature_is_rejected(mlp: Marked) -> None:
    sig = bytearray(mlp.claim.signature)
    sig[0] ^= 0x80
    with pytest.raises(WatermarkError, match="signature"):
        verify(mlp.marked, dataclasses.replace(mlp.claim, signature=bytes(sig)), mlp.key)
    with pytest.raises(WatermarkError, match="signature"):
        verify(mlp.marked, dataclasses.replace(mlp.claim, n_bits=64), mlp.key)


def test_model_without_the_layer_is_rejected(mlp: Marked, cnn: Marked) -> None:
    with pytest.raises(WatermarkError, match="no dense layer"):
        verify(cnn.marked, mlp.claim, mlp.key)


def test_garbage_model_is_rejected(mlp: Marked) -> None:
    with pytest.raises(WatermarkError):
        verify(b"\x08\x07garbage", mlp.claim, mlp.key)


# --- the locator survives renaming, quantisation, QDQ and pruning --------------------------------


def _renamed(model: bytes) -> bytes:
    proto = onnx.load_from_string(model)
    names: dict[str, str] = {}
    for i, init in enumerate(proto.graph.initializer):
        names[init.name] = f"t{i}_{init.name[::-1]}"
        init.name = names[init.name]
    for j, node in enumerate(proto.graph.node):
        node.name = f"n{j}"
        for seq in (node.input, node.output):
            for k, name in enumerate(seq):
                if name in names:
                    seq[k] = names[name]
                elif name not in ("x", "logits"):
                    names[name] = seq[k] = f"v_{name}_{j}"
    return proto.SerializeToString()


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_renamed_tensors_are_located(name: str, request: Any) -> None:
    m: Marked = request.getfixturevalue(name)
    renamed = _renamed(m.marked)
    inits = {i.name for i in onnx.load_from_string(renamed).graph.initializer}
    assert not inits & {i.name for i in onnx.load_from_string(m.marked).graph.initializer}
    verdict = verify(renamed, m.claim, m.key)
    assert verdict.detected and verdict.layer_node.startswith("n")


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_int8_dynamic_quantised_model_is_located_and_detected(
    name: str, request: Any, tmp_path: Path
) -> None:
    m: Marked = request.getfixturevalue(name)
    quantised = _quantize(m.marked, tmp_path)
    ops = {n.op_type for n in onnx.load_from_string(quantised).graph.node}
    assert ops & {"MatMulInteger", "ConvInteger"}
    verdict = verify(quantised, m.claim, m.key)
    assert verdict.detected, verdict
    assert not verify(_quantize(m.original, tmp_path), m.claim, m.key).detected


def test_qdq_int8_weights_are_dequantised(mlp: Marked) -> None:
    proto = onnx.load_from_string(mlp.marked)
    weight = numpy_helper.to_array(proto.graph.initializer[0])  # fc1.weight (128, 64)
    scale = np.abs(weight).max(axis=1) / 127.0
    q = np.clip(np.round(weight / scale[:, None]), -127, 127).astype(np.int8)
    name = proto.graph.initializer[0].name
    del proto.graph.initializer[0]
    proto.graph.initializer.extend([
        numpy_helper.from_array(q, "wq"),
        numpy_helper.from_array(scale.astype(np.float32), "ws"),
        numpy_helper.from_array(np.zeros(128, dtype=np.int8), "wz"),
    ])  # fmt: skip
    proto.graph.node.insert(0, helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], [name],
                                                axis=0))  # fmt: skip
    layers = weight_layers(proto)
    assert layers[0].initializer is None and layers[0].weight.shape == (128, 64)
    assert verify(proto.SerializeToString(), mlp.claim, mlp.key).detected
    model_out = onnx_predictor(proto.SerializeToString())(mlp.x_test[:5])
    assert model_out.shape == (5, 10)


def test_half_pruned_model_is_detected(cnn: Marked) -> None:
    proto = onnx.load_from_string(cnn.marked)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.ndim > 1:
            w = np.where(np.abs(w) < np.median(np.abs(w)), 0, w).astype(w.dtype)
            init.CopyFrom(numpy_helper.from_array(w, init.name))
    assert verify(proto.SerializeToString(), cnn.claim, cnn.key).detected


def _each_mark(model: bytes, m: Marked) -> list[int]:
    weight = locate(onnx.load_from_string(model), m.claim.layer).weight
    message = message_bits(m.claim.owner_public_key, m.claim.n_bits)
    params = [m.claim.projection, *([] if m.claim.second is None else [m.claim.second])]
    return [mark_matches(weight, p, m.key, message, i) for i, p in enumerate(params)]


def _global_prune(model: bytes, rate: float) -> bytes:
    proto = onnx.load_from_string(model)
    inits = [i for i in proto.graph.initializer if len(i.dims) > 1]
    cut = np.quantile(np.concatenate([np.abs(numpy_helper.to_array(i)).ravel() for i in inits]),
                      rate)  # fmt: skip
    for init in inits:
        w = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.where(np.abs(w) < cut, 0, w).astype(w.dtype),
                                              init.name))  # fmt: skip
    return proto.SerializeToString()


def test_cnn_claim_carries_a_second_robust_mark(cnn: Marked) -> None:
    """The CNN's default claim: kernel_bag (rewrite-invariant) plus a centered mark in the same
    layer (robust to weight edits); the verdict is their Bonferroni combination."""
    assert cnn.claim.projection.reduce == "kernel_bag"
    assert cnn.claim.second is not None and cnn.claim.second.reduce == "centered"
    assert _each_mark(cnn.marked, cnn) == [128, 128]
    assert verify(cnn.marked, cnn.claim, cnn.key).p_value == pytest.approx(2 * 2.0**-128)
    unmarked = _each_mark(cnn.original, cnn)
    assert max(unmarked) < 90 and not verify(cnn.original, cnn.claim, cnn.key).detected
    # heavy global pruning: the combined verdict holds through the centered mark
    pruned = _global_prune(cnn.marked, 0.8)
    verdict = verify(pruned, cnn.claim, cnn.key)
    assert verdict.detected and verdict.matches == max(_each_mark(pruned, cnn))


# --- training-time embedding with the regulariser ----------------------------------------------


def test_regulariser_embeds_during_training() -> None:
    torch.set_num_threads(1)
    data = load_digits()
    owner = Ed25519PrivateKey.generate()
    key = WatermarkKey.generate()
    layer = LayerLocator("dense", (64, 128), 0)  # fc2
    plan = WatermarkPlan(key, public_key_bytes(owner.public_key()), layer, n_bits=64)
    reg = WatermarkRegularizer(plan)
    torch.manual_seed(3)
    model = SmallMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    tx, ty = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(4):
        for start in range(0, len(tx), 64):
            loss = torch.nn.functional.cross_entropy(model(tx[start : start + 64]),
                                                     ty[start : start + 64])  # fmt: skip
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            reg.add_grad_(model.fc2.weight, 1.0)  # as a DP trainer would, after clipping/noise
            opt.step()
    assert reg.matches(model.fc2.weight) == 64
    claim = plan.claim(owner, trigger=None, now=NOW)
    assert verify(to_onnx(model), claim, key).detected


# --- reports -----------------------------------------------------------------------------------


def test_signed_report_round_trips_and_detects_tampering(mlp: Marked) -> None:
    verifier = Ed25519PrivateKey.generate()
    verdict = verify(mlp.marked, mlp.claim, mlp.key)
    report = VerificationReport.create(verdict, mlp.claim, signing_key=verifier, now=NOW)
    parsed = VerificationReport.from_json(report.to_json())
    assert parsed.p_value == verdict.p_value and parsed.model_sha256 == verdict.model_sha256
    assert parsed.verified_at == NOW and parsed.detected
    parsed.verify_signature(public_key_bytes(verifier.public_key()))
    with pytest.raises(WatermarkError, match="different verifier"):
        parsed.verify_signature(bytes(32))
    data = json.loads(report.to_json())
    data["p_value"] = "0.5"
    with pytest.raises(WatermarkError, match="signature"):
        VerificationReport.from_json(json.dumps(data))
    page = report.to_html()
    assert verdict.model_sha256 in page and "DETECTED" in page and "<script" not in page


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_keygen_embed_verify_exit_codes(tmp_path: Path, capsys: Any) -> None:
    torch.set_num_threads(1)
    data = load_digits()
    torch.manual_seed(5)
    model = train(SmallMLP(), data.x_train, data.y_train, epochs=8)
    (tmp_path / "in.onnx").write_bytes(to_onnx(model))
    np.savez(tmp_path / "data.npz", x=data.x_train, y=data.y_train)
    p = str(tmp_path)
    assert main(["watermark", "keygen", "--out", f"{p}/key.json"]) == 0
    assert main(["watermark", "keygen", "--out", f"{p}/verifier.json"]) == 0
    assert main(["watermark", "embed", "--model", f"{p}/in.onnx", "--key", f"{p}/key.json",
                 "--data", f"{p}/data.npz", "--out", f"{p}/out.onnx", "--claim-out",
                 f"{p}/claim.json", "--epochs", "12"]) == 0  # fmt: skip
    assert main(["watermark", "reveal", "--key", f"{p}/key.json", "--out", f"{p}/open.json"]) == 0
    assert "owner_private_key" not in (tmp_path / "open.json").read_text()
    base = ["watermark", "verify", "--claim", f"{p}/claim.json", "--opening", f"{p}/open.json"]
    capsys.readouterr()
    assert main([*base, "--model", f"{p}/out.onnx", "--json", "--trigger",
                 "--report-out", f"{p}/r.json", "--html-out", f"{p}/r.html",
                 "--report-key", f"{p}/verifier.json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    assert printed["detected"] is True and printed["p_value"] < 1e-9
    assert printed["trigger"]["detected"] is True
    assert VerificationReport.from_json((tmp_path / "r.json").read_text()).detected
    assert "<html" in (tmp_path / "r.html").read_text()
    # not detected: the unmarked original
    assert main([*base, "--model", f"{p}/in.onnx"]) == 1
    # a stricter threshold than any 128-bit result can meet is still a valid request
    assert main([*base, "--model", f"{p}/out.onnx", "--threshold", "1e-40"]) == 1
    # tampered claim: verification fails, exit 1
    claim = json.loads((tmp_path / "claim.json").read_text())
    claim["created_at"] = "2020-01-01T00:00:00Z"
    (tmp_path / "bad.json").write_text(json.dumps(claim))
    assert main(["watermark", "verify", "--model", f"{p}/out.onnx", "--claim", f"{p}/bad.json",
                 "--opening", f"{p}/open.json"]) == 1  # fmt: skip
    # usage errors: exit 2
    assert main(["watermark", "verify", "--model", f"{p}/out.onnx", "--claim",
                 f"{p}/claim.json"]) == 2  # fmt: skip
    assert main([*base, "--model", f"{p}/missing.onnx"]) == 2
    assert main([*base, "--model", f"{p}/out.onnx", "--threshold", "2"]) == 2
    assert main([*base, "--model", f"{p}/out.onnx", "--report-out", f"{p}/x.json"]) == 2
    assert main(["watermark", "verify", "--bogus"]) == 2


def test_channel_mean_reduction_embeds_and_verifies(cnn: Marked) -> None:
    data = load_digits().shaped(True)
    result = embed_onnx(cnn.original, owner_key=cnn.owner, key=cnn.key, x=data.x_train,
                        y=data.y_train, now=NOW, reduce="channel_mean", n_bits=64, epochs=4,
                        trigger_count=0)  # fmt: skip
    assert result.claim.projection.reduce == "channel_mean"
    assert result.claim.projection.dim == 16 * 3 * 3
    assert verify(result.model, result.claim, cnn.key).detected
    assert not verify(cnn.original, result.claim, cnn.key).detected


def _static_quantised(model: bytes, x: np.ndarray, tmp_path: Path, fmt: str) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"x": x[i : i + 32]} for i in range(0, 96, 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    src, dst = tmp_path / "f.onnx", tmp_path / f"{fmt}.onnx"
    src.write_bytes(model)
    quant_format = QuantFormat.QOperator if fmt == "qoperator" else QuantFormat.QDQ
    quantize_static(str(src), str(dst), Reader(), quant_format=quant_format, per_channel=True,
                    weight_type=QuantType.QInt8)  # fmt: skip
    return dst.read_bytes()


@pytest.mark.parametrize(
    ("fmt", "expected_ops"),
    [("qoperator", {"QLinearConv", "QGemm"}), ("qdq", {"DequantizeLinear", "Conv"})],
)
def test_static_int8_quantised_model_is_located_and_detected(
    cnn: Marked, tmp_path: Path, fmt: str, expected_ops: set[str]
) -> None:
    quantised = _static_quantised(cnn.marked, cnn.x_test, tmp_path, fmt)
    proto = onnx.load_from_string(quantised)
    assert expected_ops <= {n.op_type for n in proto.graph.node}
    layers = weight_layers(proto)
    assert [layer.kind for layer in layers] == ["conv", "conv", "dense"]
    assert all(layer.initializer is None for layer in layers)  # read through int8 weights
    assert verify(quantised, cnn.claim, cnn.key).detected
    assert not verify(_static_quantised(cnn.original, cnn.x_test, tmp_path, fmt), cnn.claim,
                      cnn.key).detected  # fmt: skip


def test_onnxruntime_optimised_fused_graph_is_located(cnn: Marked, tmp_path: Path) -> None:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(cnn.marked, options, providers=["CPUExecutionProvider"])
    optimised = (tmp_path / "opt.onnx").read_bytes()
    assert "FusedConv" in {n.op_type for n in onnx.load_from_string(optimised).graph.node}
    assert verify(optimised, cnn.claim, cnn.key).detected
