"""Function-preserving rewrites against the default (rewrite-invariant) reductions.

Four models, each marked with ``embed_onnx``'s defaults (``reduce="auto"``): the built-in MLP
(ReLU, Adam; ``unit_gram`` on its input layer), the built-in CNN (ReLU, MaxPool, Adam;
``kernel_bag`` on its hidden conv, so BOTH sides of the marked layer are rewritten), and two
models trained here with SGD + momentum and tanh: an MLP of other widths and a CNN with average
pooling (so sign flips preserve the function). Every rewrite is checked to keep the outputs,
to keep the mark (all bits) and not to create one in the unmarked original.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from veil.sdk.errors import WatermarkError
from veil.watermark import LayerLocator, WatermarkKey, embed_onnx, onnx_predictor, verify
from veil.watermark._models import SmallCNN, SmallMLP, load_digits, to_onnx, train
from veil.watermark._rewrites import (
    fuse_batchnorm,
    permute_units,
    scale_units,
    split_batchnorm,
    toggle_transpose,
)

NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
OWNER = Ed25519PrivateKey.from_private_bytes(bytes([31]) * 32)
KEY = WatermarkKey(bytes([32]) * 32, bytes([33]) * 32)


@dataclasses.dataclass(frozen=True)
class Case:
    original: bytes
    marked: bytes
    claim: object
    x: np.ndarray
    mark: int  # index of the marked layer among the Conv/Gemm nodes
    odd: bool  # tanh: sign flips preserve the function; ReLU: positive scales do


def _sgd_tanh(layers: list[torch.nn.Module], forward: Callable[[torch.Tensor], torch.Tensor],
              x: np.ndarray, y: np.ndarray, seed: int) -> None:  # fmt: skip
    torch.manual_seed(seed)
    for layer in layers:
        layer.reset_parameters()  # type: ignore[operator]
    params = [p for layer in layers for p in layer.parameters()]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(12):
        order = torch.randperm(len(tx))
        for s in range(0, len(tx), 32):
            idx = order[s : s + 32]
            loss = torch.nn.functional.cross_entropy(forward(tx[idx]), ty[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()


def _model(
    nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], shape: list[object]
) -> bytes:
    graph = helper.make_graph(
        nodes, "test", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _arr(t: torch.Tensor, name: str) -> onnx.TensorProto:
    return numpy_helper.from_array(t.detach().numpy(), name)


def _tanh_mlp(data: object) -> bytes:
    """64-96-10 tanh MLP (SGD + momentum), as Gemm/Tanh/Gemm."""
    fc1, fc2 = torch.nn.Linear(64, 96), torch.nn.Linear(96, 10)
    _sgd_tanh([fc1, fc2], lambda t: fc2(torch.tanh(fc1(t))), data.x_train, data.y_train, 3)  # type: ignore[attr-defined]
    inits = [_arr(fc1.weight, "w1"), _arr(fc1.bias, "b1"), _arr(fc2.weight, "w2"),
             _arr(fc2.bias, "b2")]  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], transB=1),
        helper.make_node("Tanh", ["g1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["logits"], transB=1),
    ]
    return _model(nodes, inits, ["N", 64])


def _tanh_cnn(data: object) -> bytes:
    """conv 1->8 -> tanh -> avgpool -> conv 8->24 -> tanh -> avgpool -> dense 96->10 (SGD)."""
    c1, c2 = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.Conv2d(8, 24, 3, padding=1)
    fc = torch.nn.Linear(96, 10)

    def forward(t: torch.Tensor) -> torch.Tensor:
        t = torch.nn.functional.avg_pool2d(torch.tanh(c1(t.reshape(-1, 1, 8, 8))), 2)
        t = torch.nn.functional.avg_pool2d(torch.tanh(c2(t)), 2)
        out: torch.Tensor = fc(t.flatten(1))
        return out

    _sgd_tanh([c1, c2, fc], forward, data.x_train, data.y_train, 4)  # type: ignore[attr-defined]
    inits = [_arr(c1.weight, "c1w"), _arr(c1.bias, "c1b"), _arr(c2.weight, "c2w"),
             _arr(c2.bias, "c2b"), _arr(fc.weight, "fw"), _arr(fc.bias, "fb")]  # fmt: skip
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["a1"], **conv),
        helper.make_node("Tanh", ["a1"], ["t1"]),
        helper.make_node("AveragePool", ["t1"], ["p1"], **pool),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["a2"], **conv),
        helper.make_node("Tanh", ["a2"], ["t2"]),
        helper.make_node("AveragePool", ["t2"], ["p2"], **pool),
        helper.make_node("Flatten", ["p2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1),
    ]
    return _model(nodes, inits, ["N", 1, 8, 8])


def _case(original: bytes, image: bool, mark: int, odd: bool, layer: LayerLocator) -> Case:
    torch.set_num_threads(1)
    data = load_digits().shaped(image)
    result = embed_onnx(original, owner_key=OWNER, key=KEY, x=data.x_train, y=data.y_train,
                        now=NOW, epochs=10, holdout=0.0)  # fmt: skip
    assert result.claim.layer == layer  # the default picks the invariant layer
    return Case(original, result.model, result.claim, data.x_test, mark, odd)


@pytest.fixture(scope="module")
def relu_mlp() -> Case:
    torch.manual_seed(0)
    data = load_digits()
    model = to_onnx(train(SmallMLP(), data.x_train, data.y_train, epochs=12))
    return _case(model, False, 0, False, LayerLocator("dense", (128, 64), 0))


@pytest.fixture(scope="module")
def relu_cnn() -> Case:
    torch.manual_seed(0)
    data = load_digits().shaped(True)
    model = to_onnx(train(SmallCNN(), data.x_train, data.y_train, epochs=12))
    return _case(model, True, 1, False, LayerLocator("conv", (32, 16, 3, 3), 0))


@pytest.fixture(scope="module")
def tanh_mlp() -> Case:
    return _case(_tanh_mlp(load_digits()), False, 0, True, LayerLocator("dense", (96, 64), 0))


@pytest.fixture(scope="module")
def tanh_cnn() -> Case:
    return _case(_tanh_cnn(load_digits()), True, 1, True, LayerLocator("conv", (24, 8, 3, 3), 0))


CASES = ["relu_mlp", "relu_cnn", "tanh_mlp", "tanh_cnn"]
Rewrite = Callable[[onnx.ModelProto, Case, np.random.Generator], onnx.ModelProto]


def _factors(
    case: Case, model: onnx.ModelProto, index: int, rng: np.random.Generator
) -> np.ndarray:
    node = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")][index]
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    n = init.dims[0]
    if case.odd:  # sign flips around tanh (and average pooling)
        return rng.choice([-1.0, 1.0], n)
    return np.exp(rng.uniform(-1.5, 1.5, n))  # positive: commutes with ReLU and MaxPool


def _sides(case: Case) -> list[int]:
    """The layers whose output units touch the marked weight: its own, and the one before."""
    return [case.mark - 1, case.mark] if case.mark > 0 else [case.mark]


def permute(model: onnx.ModelProto, case: Case, rng: np.random.Generator) -> onnx.ModelProto:
    for index in _sides(case):
        model = permute_units(model, index, rng)
    return model


def rescale_or_flip(
    model: onnx.ModelProto, case: Case, rng: np.random.Generator
) -> onnx.ModelProto:
    for index in _sides(case):
        model = scale_units(model, index, _factors(case, model, index, rng))
    return model


def batchnorm_split(
    model: onnx.ModelProto, case: Case, rng: np.random.Generator
) -> onnx.ModelProto:
    return split_batchnorm(model, case.mark, rng)


def batchnorm_fused(
    model: onnx.ModelProto, case: Case, rng: np.random.Generator
) -> onnx.ModelProto:
    """A BatchNorm with random statistics and signed gamma, then fused into the layer."""
    return fuse_batchnorm(split_batchnorm(rescale_or_flip(model, case, rng), case.mark, rng))


def transposed(model: onnx.ModelProto, case: Case, rng: np.random.Generator) -> onnx.ModelProto:
    gemms = [i for i, n in enumerate(n for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
             if n.op_type == "Gemm"]  # fmt: skip
    for index in gemms:  # the marked Gemm where there is one, the dense head otherwise
        model = toggle_transpose(model, index)
    return model


def everything(model: onnx.ModelProto, case: Case, rng: np.random.Generator) -> onnx.ModelProto:
    return transposed(batchnorm_fused(permute(model, case, rng), case, rng), case, rng)


REWRITES: list[Rewrite] = [permute, rescale_or_flip, batchnorm_split, batchnorm_fused, transposed,
                           everything]  # fmt: skip


@pytest.mark.parametrize("case_name", CASES)
def test_rewrites_keep_the_function_and_the_mark(
    case_name: str, request: pytest.FixtureRequest
) -> None:
    case: Case = request.getfixturevalue(case_name)
    for fn in REWRITES:
        for source, marked in ((case.marked, True), (case.original, False)):
            rewritten = fn(onnx.load_from_string(source), case, np.random.default_rng(5))
            data = rewritten.SerializeToString()
            want, got = onnx_predictor(source)(case.x), onnx_predictor(data)(case.x)
            np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=fn.__name__)
            verdict = verify(data, case.claim, KEY)  # type: ignore[arg-type]
            if marked:
                assert verdict.matches == verdict.n_bits, (fn.__name__, verdict)
            else:
                assert not verdict.detected and verdict.p_value > 1e-4, (fn.__name__, verdict)


def _quantised(model: bytes, x: np.ndarray, tmp_path: Path, form: str) -> bytes:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    src, dst = tmp_path / f"f-{form}.onnx", tmp_path / f"q-{form}.onnx"
    src.write_bytes(model)
    if form == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return dst.read_bytes()

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"x": x[i : i + 32]} for i in range(0, 96, 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    fmt = QuantFormat.QDQ if form == "qdq" else QuantFormat.QOperator
    quantize_static(str(src), str(dst), Reader(), quant_format=fmt, per_channel=True,
                    weight_type=QuantType.QInt8)  # fmt: skip
    return dst.read_bytes()


EXPECTED_OPS = {"dynamic": {"MatMulInteger", "ConvInteger"}, "qdq": {"DequantizeLinear"},
                "qlinear": {"QLinearConv", "QLinearMatMul", "QGemm"}}  # fmt: skip


@pytest.mark.parametrize("case_name", CASES)
@pytest.mark.parametrize("form", ["dynamic", "qdq", "qlinear"])
def test_int8_after_every_rewrite_keeps_the_mark(
    case_name: str, form: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case: Case = request.getfixturevalue(case_name)
    for source, marked in ((case.marked, True), (case.original, False)):
        rewritten = everything(onnx.load_from_string(source), case, np.random.default_rng(9))
        quantised = _quantised(rewritten.SerializeToString(), case.x, tmp_path, form)
        ops = {n.op_type for n in onnx.load_from_string(quantised).graph.node}
        assert ops & EXPECTED_OPS[form], ops
        verdict = verify(quantised, case.claim, KEY)  # type: ignore[arg-type]
        assert verdict.detected is marked, (form, verdict)


def test_ort_fuses_a_split_batchnorm_into_the_conv_and_the_mark_stays(
    relu_cnn: Case, tmp_path: Path
) -> None:
    import onnxruntime as ort

    split = split_batchnorm(onnx.load_from_string(relu_cnn.marked), 1, np.random.default_rng(3))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(split.SerializeToString(), options, providers=["CPUExecutionProvider"])
    fused = (tmp_path / "fused.onnx").read_bytes()
    assert "BatchNormalization" not in {n.op_type for n in onnx.load_from_string(fused).graph.node}
    assert verify(fused, relu_cnn.claim, KEY).matches == 128  # type: ignore[arg-type]


def test_centered_reduction_is_defeated_by_permutation(relu_mlp: Case) -> None:
    """Why the default moved to invariant reductions: ``centered`` does not survive it."""
    data = load_digits()
    result = embed_onnx(relu_mlp.original, owner_key=OWNER, key=KEY, x=data.x_train,
                        y=data.y_train, now=NOW, epochs=4, holdout=0.0,
                        reduce="centered")  # fmt: skip
    assert verify(result.model, result.claim, KEY).detected
    permuted = permute_units(onnx.load_from_string(result.model), 0, np.random.default_rng(1))
    assert not verify(permuted.SerializeToString(), result.claim, KEY).detected


def test_invariant_reductions_need_enough_values_for_the_bits() -> None:
    from veil.watermark import WatermarkPlan
    from veil.watermark._claim import public_key_bytes

    owner = public_key_bytes(OWNER.public_key())
    with pytest.raises(WatermarkError, match="fewer than 128 bits"):
        WatermarkPlan(KEY, owner, LayerLocator("dense", (16, 10), 0), reduce="unit_gram")
    with pytest.raises(WatermarkError, match="kernel_bag"):
        WatermarkPlan(KEY, owner, LayerLocator("conv", (16, 4, 1, 1), 0), reduce="kernel_bag")
    with pytest.raises(WatermarkError, match="conv layers only"):
        WatermarkPlan(KEY, owner, LayerLocator("dense", (64, 64), 0), reduce="kernel_bag")


def test_kernel_bag_is_invariant_on_both_sides_and_torch_agrees() -> None:
    from veil.watermark import WatermarkPlan, WatermarkRegularizer
    from veil.watermark._claim import public_key_bytes
    from veil.watermark._invariants import kernel_bag

    rng = np.random.default_rng(0)
    weight = rng.normal(size=(12, 6, 3, 3))
    a = rng.choice([-1.0, 1.0], 12) * np.exp(rng.uniform(-2, 2, 12))  # outputs: any sign
    b = rng.choice([-1.0, 1.0], 6) * np.exp(rng.uniform(-2, 2, 6))  # inputs: any sign
    moved = (weight * a[:, None, None, None] * b[None, :, None, None])[rng.permutation(12)]
    moved = moved[:, rng.permutation(6)]
    np.testing.assert_allclose(kernel_bag(moved), kernel_bag(weight), atol=1e-10)
    assert np.linalg.norm(kernel_bag(weight + 0.1 * rng.normal(size=weight.shape))
                          - kernel_bag(weight)) > 1e-3  # fmt: skip
    plan = WatermarkPlan(KEY, public_key_bytes(OWNER.public_key()),
                         LayerLocator("conv", (12, 6, 3, 3), 0), reduce="kernel_bag")  # fmt: skip
    vector = kernel_bag(weight)
    want = plan.projection() @ vector / np.linalg.norm(vector)
    got = WatermarkRegularizer(plan).projected(torch.from_numpy(weight)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
