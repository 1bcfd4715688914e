"""Function-preserving rewrites of the marked layer's output units, against ``unit_gram``.

Each rewrite is applied to the ONNX graph with numpy, checked to leave the model's outputs
unchanged (int8 aside), and must keep the mark detected; the same rewrite of the unmarked model
must not be. Covered: the built-in MLP (ReLU, Adam) and a tanh MLP trained here with SGD. The
marked layer reads the model input, so only its output side can be rewritten; input-side
rewrites of a hidden layer (e.g. the CNN's second conv) are NOT covered by ``unit_gram``.
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

from veil.watermark import LayerLocator, WatermarkKey, embed_onnx, onnx_predictor, verify
from veil.watermark._models import SmallMLP, load_digits, to_onnx, train

NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)
OWNER = Ed25519PrivateKey.from_private_bytes(bytes([31]) * 32)
KEY = WatermarkKey(bytes([32]) * 32, bytes([33]) * 32)
Rewrite = Callable[[onnx.ModelProto, np.random.Generator], onnx.ModelProto]


@dataclasses.dataclass(frozen=True)
class Case:
    original: bytes
    marked: bytes
    claim: object
    x: np.ndarray
    odd: bool  # tanh hidden units: sign flips preserve the function, positive scaling does not


def _tanh_mlp() -> bytes:
    """A 64-96-10 tanh MLP trained with SGD + momentum, exported as Gemm/Tanh/Gemm."""
    data = load_digits()
    torch.manual_seed(3)
    fc1, fc2 = torch.nn.Linear(64, 96), torch.nn.Linear(96, 10)
    opt = torch.optim.SGD([*fc1.parameters(), *fc2.parameters()], lr=0.05, momentum=0.9)
    tx, ty = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    for _ in range(15):
        order = torch.randperm(len(tx))
        for s in range(0, len(tx), 32):
            idx = order[s : s + 32]
            loss = torch.nn.functional.cross_entropy(fc2(torch.tanh(fc1(tx[idx]))), ty[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    named = [("w1", fc1.weight), ("b1", fc1.bias), ("w2", fc2.weight), ("b2", fc2.bias)]
    inits = [numpy_helper.from_array(t.detach().numpy(), n) for n, t in named]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["g1"], transB=1),
        helper.make_node("Tanh", ["g1"], ["h1"]),
        helper.make_node("Gemm", ["h1", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tanh", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _case(original: bytes, shape: tuple[int, int], odd: bool) -> Case:
    torch.set_num_threads(1)
    data = load_digits()
    result = embed_onnx(original, owner_key=OWNER, key=KEY, x=data.x_train, y=data.y_train,
                        now=NOW, layer=LayerLocator("dense", shape, 0), reduce="unit_gram",
                        strength=5.0, epochs=12)  # fmt: skip
    return Case(original, result.model, result.claim, data.x_test, odd)


@pytest.fixture(scope="module")
def relu_mlp() -> Case:
    torch.manual_seed(0)
    data = load_digits()
    return _case(to_onnx(train(SmallMLP(), data.x_train, data.y_train, epochs=12)), (128, 64),
                 odd=False)  # fmt: skip


@pytest.fixture(scope="module")
def tanh_mlp() -> Case:
    return _case(_tanh_mlp(), (96, 64), odd=True)


# --- rewrites of the first Gemm's output units (and the next Gemm's inputs) -----------------


def _gemms(model: onnx.ModelProto) -> tuple[onnx.NodeProto, onnx.NodeProto]:
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    return gemms[0], gemms[1]


def _get(model: onnx.ModelProto, name: str) -> np.ndarray:
    init = next(i for i in model.graph.initializer if i.name == name)
    return numpy_helper.to_array(init).astype(np.float64)


def _set(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _units(model: onnx.ModelProto, fn: Callable[..., tuple[np.ndarray, ...]]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    first, second = _gemms(out)
    w1, b1, w2 = (_get(out, first.input[1]), _get(out, first.input[2]),
                  _get(out, second.input[1]))  # fmt: skip
    w1, b1, w2 = fn(w1, b1, w2)  # w1 (out, in), w2 (next, out): transB=1 layout
    _set(out, first.input[1], w1)
    _set(out, first.input[2], b1)
    _set(out, second.input[1], w2)
    return out


def permute(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    def fn(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, ...]:
        p = rng.permutation(len(b1))
        return w1[p], b1[p], w2[:, p]

    return _units(model, fn)


def rescale(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    def fn(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, ...]:
        d = np.exp(rng.uniform(-1.5, 1.5, len(b1)))  # positive: commutes with ReLU
        return w1 * d[:, None], b1 * d, w2 / d[None, :]

    return _units(model, fn)


def flip_signs(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    def fn(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray) -> tuple[np.ndarray, ...]:
        s = rng.choice([-1.0, 1.0], len(b1))  # tanh is odd
        return w1 * s[:, None], b1 * s, w2 * s[None, :]

    return _units(model, fn)


def batchnorm(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """Split the first Gemm into Gemm + BatchNormalization (what fusing BN undoes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    first, _ = _gemms(out)
    w1, b1 = _get(out, first.input[1]), _get(out, first.input[2])
    n = len(b1)
    gamma = rng.choice([-1.0, 1.0], n) * np.exp(rng.uniform(-1, 1, n))
    beta, mean = rng.normal(size=n), rng.normal(size=n)
    eps = 1e-5
    var = np.exp(rng.uniform(-1, 1, n))
    scale = gamma / np.sqrt(var + eps)
    # BN(Gemm'(x)) = scale * (W' x + b' - mean) + beta == W1 x + b1
    _set(out, first.input[1], w1 / scale[:, None])
    _set(out, first.input[2], (b1 - beta) / scale + mean)
    bn_out = first.output[0]
    first.output[0] = bn_out + "_pre_bn"
    for name, value in (("bn_s", gamma), ("bn_b", beta), ("bn_m", mean), ("bn_v", var)):
        out.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), name))
    bn = helper.make_node("BatchNormalization", [first.output[0], "bn_s", "bn_b", "bn_m", "bn_v"],
                          [bn_out], epsilon=eps)  # fmt: skip
    index = list(out.graph.node).index(first)
    out.graph.node.insert(index + 1, bn)
    return out


def untranspose(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """Store the first Gemm's weight as (in, out) with transB=0."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    first, _ = _gemms(out)
    _set(out, first.input[1], _get(out, first.input[1]).T)
    for attr in first.attribute:
        if attr.name == "transB":
            attr.i = 0
    return out


def everything(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """Permute, rescale (ReLU), split off a BatchNorm, and store the weight untransposed."""
    return untranspose(batchnorm(rescale(permute(model, rng), rng), rng), rng)


def everything_odd(model: onnx.ModelProto, rng: np.random.Generator) -> onnx.ModelProto:
    """The same with sign flips instead of positive rescaling (tanh)."""
    return untranspose(batchnorm(flip_signs(permute(model, rng), rng), rng), rng)


# Which rewrites preserve which model's function: positive rescaling commutes with ReLU only,
# sign flips with odd activations (tanh) only.
COMBINATIONS = [
    *[("relu_mlp", fn) for fn in (permute, rescale, batchnorm, untranspose, everything)],
    *[("tanh_mlp", fn) for fn in (permute, flip_signs, batchnorm, untranspose, everything_odd)],
]


def _int8(model: bytes, tmp_path: Path) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    src.write_bytes(model)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    return dst.read_bytes()


@pytest.mark.parametrize(
    ("case_name", "fn"), COMBINATIONS, ids=[f"{c}-{f.__name__}" for c, f in COMBINATIONS]
)
def test_rewrite_keeps_the_function_and_the_mark(
    case_name: str, fn: Rewrite, request: pytest.FixtureRequest
) -> None:
    case: Case = request.getfixturevalue(case_name)
    for source, marked in ((case.marked, True), (case.original, False)):
        rng = np.random.default_rng(5)
        rewritten = fn(onnx.load_from_string(source), rng).SerializeToString()
        want = onnx_predictor(source)(case.x)
        got = onnx_predictor(rewritten)(case.x)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
        verdict = verify(rewritten, case.claim, KEY)  # type: ignore[arg-type]
        if marked:
            assert verdict.detected and verdict.matches == verdict.n_bits, verdict
        else:
            assert not verdict.detected and verdict.p_value > 1e-3, verdict


@pytest.mark.parametrize("case_name", ["relu_mlp", "tanh_mlp"])
def test_int8_after_a_rewrite_keeps_the_mark(
    case_name: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    case: Case = request.getfixturevalue(case_name)
    fn = everything_odd if case.odd else everything
    for source, marked in ((case.marked, True), (case.original, False)):
        rewritten = fn(onnx.load_from_string(source), np.random.default_rng(9))
        quantised = _int8(rewritten.SerializeToString(), tmp_path)
        ops = {n.op_type for n in onnx.load_from_string(quantised).graph.node}
        assert "MatMulInteger" in ops
        verdict = verify(quantised, case.claim, KEY)  # type: ignore[arg-type]
        assert verdict.detected is marked, verdict


def test_centered_reduction_is_defeated_by_permutation(relu_mlp: Case) -> None:
    """Why ``unit_gram`` exists: the default ``centered`` mark does not survive a permutation."""
    data = load_digits()
    result = embed_onnx(relu_mlp.original, owner_key=OWNER, key=KEY, x=data.x_train,
                        y=data.y_train, now=NOW, epochs=4, holdout=0.0)  # fmt: skip
    assert verify(result.model, result.claim, KEY).detected
    permuted = permute(onnx.load_from_string(result.model), np.random.default_rng(1))
    assert not verify(permuted.SerializeToString(), result.claim, KEY).detected


def test_unit_gram_needs_enough_values_for_the_bits() -> None:
    from veil.sdk.errors import WatermarkError
    from veil.watermark import WatermarkPlan
    from veil.watermark._claim import public_key_bytes

    with pytest.raises(WatermarkError, match="fewer than 128 bits"):
        WatermarkPlan(KEY, public_key_bytes(OWNER.public_key()),
                      LayerLocator("conv", (16, 1, 3, 3), 0), reduce="unit_gram")  # fmt: skip
