"""Issue 15: the embedding keeps accuracy on a model Veil did not train, and a claim with two
marks (a rewrite-invariant one and a robust one) keeps an exact combined verdict."""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime
from fractions import Fraction

import numpy as np
import onnx
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from onnx import TensorProto, helper, numpy_helper

from veil.sdk.errors import WatermarkError
from veil.watermark import (
    LayerLocator,
    ProjectionParams,
    WatermarkClaim,
    WatermarkKey,
    binomial_tail,
    embed_onnx,
    onnx_predictor,
    verify,
)
from veil.watermark._invariants import kernel_bag_dim
from veil.watermark._models import load_digits
from veil.watermark._verify import combine

NOW = datetime(2026, 12, 1, 9, 0, 0, tzinfo=UTC)
OWNER = Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32)
KEY = WatermarkKey(bytes([22]) * 32, bytes([23]) * 32)


# --- the combined verdict is exact --------------------------------------------------------------


@pytest.mark.parametrize("n_bits", [16, 24])
def test_bonferroni_combination_never_exceeds_its_level(n_bits: int) -> None:
    """P[combined p <= a] <= a, summed exactly over every outcome of the two match counts, for
    independent marks and for the two extreme dependences (equal counts, mirrored counts)."""
    table = {
        (k1, k2): combine([k1, k2], n_bits)[1]
        for k1, k2 in itertools.product(range(n_bits + 1), repeat=2)
    }
    mass = [Fraction(math.comb(n_bits, k), 2**n_bits) for k in range(n_bits + 1)]
    for level in (0.001, 0.01, 0.05, 0.2):
        independent = sum(mass[k1] * mass[k2] for (k1, k2), p in table.items() if p <= level)
        equal = sum(mass[k] for k in range(n_bits + 1) if table[k, k] <= level)
        mirrored = sum(mass[k] for k in range(n_bits + 1) if table[k, n_bits - k] <= level)
        for size in (independent, equal, mirrored):
            assert float(size) <= level
    # and it is the Bonferroni bound of the stronger mark, reported with its count
    k, p = combine([n_bits - 1, n_bits // 2], n_bits)
    assert k == n_bits - 1
    assert p == pytest.approx(2 * binomial_tail(n_bits - 1, n_bits, Fraction(1, 2)))
    assert combine([n_bits // 2], n_bits)[1] == binomial_tail(n_bits // 2, n_bits, Fraction(1, 2))
    assert combine([0, 0], n_bits)[1] == 1.0


def _conv_model(weight: np.ndarray) -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "unmarked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weight.shape[1], 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_two_mark_claim_makes_no_false_accusation_over_many_unmarked_models() -> None:
    """300 unmarked conv layers (random weights, independent of the key) checked against one
    two-mark claim: none detected at the default threshold, and at level 0.05 no more than a
    Binomial(300, 0.05) count allows (the combined p-value is conservative)."""
    shape = (12, 6, 3, 3)
    assert kernel_bag_dim(shape) >= 32
    claim = WatermarkClaim.create(
        owner_key=OWNER,
        key=KEY,
        layer=LayerLocator("conv", shape, 0),
        n_bits=32,
        projection=ProjectionParams("kernel_bag", kernel_bag_dim(shape)),
        trigger=None,
        now=NOW,
        second=ProjectionParams("centered", int(np.prod(shape))),
    )
    rng = np.random.default_rng(2026)
    p_values = [
        verify(_conv_model(rng.standard_normal(shape) * rng.uniform(0.05, 1.0)), claim, KEY).p_value
        for _ in range(300)
    ]
    assert min(p_values) >= 1e-9
    # P[Bin(300, 0.05) >= 27] < 1e-3: more would mean the combination is not exact
    assert sum(p <= 0.05 for p in p_values) < 27
    assert 0 < np.mean(p_values) <= 1


def test_second_mark_is_signed_and_absent_from_one_mark_claims() -> None:
    layer = LayerLocator("conv", (12, 6, 3, 3), 0)
    bag = ProjectionParams("kernel_bag", kernel_bag_dim(layer.weight_shape))
    common = {"owner_key": OWNER, "key": KEY, "layer": layer, "n_bits": 32, "trigger": None,
              "now": NOW, "projection": bag}  # fmt: skip
    one = WatermarkClaim.create(**common)  # type: ignore[arg-type]
    assert "second" not in json.loads(one.to_json())
    two = WatermarkClaim.create(**common, second=ProjectionParams("centered", 648))  # type: ignore[arg-type]
    data = json.loads(two.to_json())
    assert data["second"] == {"dim": 648, "reduce": "centered", "scheme": "veil-wm-proj-v1"}
    assert WatermarkClaim.from_json(two.to_json()) == two
    del data["second"]  # dropping the robust mark breaks the owner's signature
    with pytest.raises(WatermarkError, match="signature"):
        WatermarkClaim.from_json(json.dumps(data))
    with pytest.raises(WatermarkError, match="repeats"):
        WatermarkClaim.create(**common, second=ProjectionParams("kernel_bag", 100))  # type: ignore[arg-type]


# --- accuracy on a model trained elsewhere -------------------------------------------------------


def _external_mlp(seed: int) -> bytes:
    """A tanh MLP 64-48-10 trained with RMSprop (not Veil's trainer), exported as Gemm nodes."""
    data = load_digits(seed=0)
    torch.manual_seed(seed)
    first, second = torch.nn.Linear(64, 48), torch.nn.Linear(48, 10)
    params = [*first.parameters(), *second.parameters()]
    optimizer = torch.optim.RMSprop(params, lr=1e-3)
    tx, ty = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(40):
        order = torch.randperm(len(tx), generator=gen)
        for start in range(0, len(tx), 32):
            idx = order[start : start + 32]
            loss = torch.nn.functional.cross_entropy(second(torch.tanh(first(tx[idx]))), ty[idx])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    inits = [
        numpy_helper.from_array(t.detach().numpy(), name)
        for t, name in zip(params, ("w0", "b0", "w1", "b1"), strict=True)
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w0", "b0"], ["g0"], transB=1),
            helper.make_node("Tanh", ["g0"], ["h0"]),
            helper.make_node("Gemm", ["h0", "w1", "b1"], ["logits"], transB=1),
        ],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_external_model_loses_at_most_half_a_point_on_an_unseen_test_split() -> None:
    """The owner's rows train the mark, "fresh" rows steer it, and the drop is measured on the
    test split neither saw (540 rows: one row is 0.19 points)."""
    torch.set_num_threads(1)
    data = load_digits(seed=0)
    base = _external_mlp(seed=10)
    result = embed_onnx(base, owner_key=OWNER, key=KEY, x=data.x_train, y=data.y_train, now=NOW,
                        holdout_data=(data.x_fresh, data.y_fresh))  # fmt: skip
    assert result.verdict.detected and result.verdict.matches == 128
    assert result.claim.second is None  # a dense input layer: unit_gram alone
    assert result.trigger_verdict is not None and result.trigger_verdict.detected
    before = onnx_predictor(base)(data.x_test).argmax(axis=1)
    after = onnx_predictor(result.model)(data.x_test).argmax(axis=1)
    drop = 100 * (np.mean(before == data.y_test) - np.mean(after == data.y_test))
    assert drop <= 0.5
    # the function is kept, not only the accuracy: at most 2% of the unseen rows change class
    assert np.mean(before == after) >= 0.98
    report = result.claim.embedding
    assert report is not None and report.holdout_rows == len(data.y_fresh)
    proto = onnx.load_from_string(result.model)
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Tanh", "Gemm"]
