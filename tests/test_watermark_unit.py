"""Watermark building blocks: p-values, key derivation, commitments, claims, trigger sets."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
from datetime import UTC, datetime
from fractions import Fraction

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

import veil.watermark as watermark
from veil.sdk.errors import WatermarkError
from veil.watermark import (
    LayerLocator,
    ProjectionParams,
    TriggerParams,
    WatermarkClaim,
    WatermarkKey,
    binomial_tail,
    derive_trigger_set,
    message_bits,
)
from veil.watermark._keys import derive_projection, gaussian_stream

NOW = datetime(2026, 11, 28, 4, 0, 0, tzinfo=UTC)


def _fixed_bytes(seed: int) -> bytes:
    return bytes((seed * 31 + i * 7) % 256 for i in range(32))


def _claim(owner: Ed25519PrivateKey, key: WatermarkKey) -> WatermarkClaim:
    return WatermarkClaim.create(
        owner_key=owner,
        key=key,
        layer=LayerLocator("dense", (128, 64), 0),
        n_bits=64,
        projection=ProjectionParams(reduce="centered", dim=128 * 64),
        trigger=None,
        now=NOW,
    )


# --- exact binomial p-values -------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 5, 12])
def test_binomial_tail_half_equals_brute_force_enumeration(n: int) -> None:
    counts = [0] * (n + 1)
    for outcome in itertools.product((0, 1), repeat=n):
        counts[sum(outcome)] += 1
    for k in range(n + 1):
        brute = Fraction(sum(counts[k:]), 2**n)
        assert binomial_tail(k, n, Fraction(1, 2)) == float(brute)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_binomial_tail_third_equals_brute_force_enumeration(n: int) -> None:
    # Each trial has 3 equally likely outcomes; outcome 0 is a "match" (chance 1/3).
    counts = [0] * (n + 1)
    for outcome in itertools.product((0, 1, 2), repeat=n):
        counts[sum(1 for v in outcome if v == 0)] += 1
    for k in range(n + 1):
        assert binomial_tail(k, n, Fraction(1, 3)) == float(Fraction(sum(counts[k:]), 3**n))


def test_binomial_tail_extremes_are_exact() -> None:
    assert binomial_tail(0, 128, Fraction(1, 2)) == 1.0
    assert binomial_tail(128, 128, Fraction(1, 2)) == 2.0**-128
    assert binomial_tail(127, 128, Fraction(1, 2)) == 129 * 2.0**-128
    # Agrees with scipy's survival function where scipy is accurate.
    from scipy.stats import binom

    for k in (64, 90, 110, 120):
        assert math.isclose(binomial_tail(k, 128, Fraction(1, 2)), binom.sf(k - 1, 128, 0.5),
                            rel_tol=1e-9)  # fmt: skip


def test_binomial_tail_rejects_bad_arguments() -> None:
    with pytest.raises(WatermarkError):
        binomial_tail(5, 4, Fraction(1, 2))
    with pytest.raises(WatermarkError):
        binomial_tail(1, 4, Fraction(1, 1))


# --- key material ------------------------------------------------------------------------------


def test_message_bits_are_deterministic_signs_and_key_specific() -> None:
    a = message_bits(_fixed_bytes(1), 128)
    assert a.shape == (128,)
    assert set(np.unique(a).tolist()) <= {-1, 1}
    assert np.array_equal(a, message_bits(_fixed_bytes(1), 128))
    assert not np.array_equal(a, message_bits(_fixed_bytes(2), 128))
    assert np.array_equal(message_bits(_fixed_bytes(1), 32), a[:32])


def test_message_bits_reject_bad_sizes() -> None:
    with pytest.raises(WatermarkError):
        message_bits(_fixed_bytes(1), 8)
    with pytest.raises(WatermarkError):
        message_bits(_fixed_bytes(1), 300)
    with pytest.raises(WatermarkError):
        message_bits(b"short", 64)


def test_projection_is_deterministic_standard_normal() -> None:
    x = derive_projection(_fixed_bytes(3), 64, 512)
    assert x.shape == (64, 512)
    assert np.array_equal(x, derive_projection(_fixed_bytes(3), 64, 512))
    assert not np.array_equal(x, derive_projection(_fixed_bytes(4), 64, 512))
    sample = gaussian_stream(b"seed", 40_000)
    assert abs(sample.mean()) < 0.03
    assert abs(sample.std() - 1.0) < 0.03


def test_key_commitment_opens_only_with_the_same_key() -> None:
    key = WatermarkKey(_fixed_bytes(5), _fixed_bytes(6))
    other = WatermarkKey(_fixed_bytes(5), _fixed_bytes(7))
    assert key.opens(key.commitment())
    assert not other.opens(key.commitment())
    assert WatermarkKey.from_json(key.to_json()) == key
    assert _fixed_bytes(5).hex() not in repr(key)


def test_key_generation_uses_injected_randomness() -> None:
    stream = iter([_fixed_bytes(8), _fixed_bytes(9)])
    key = WatermarkKey.generate(lambda n: next(stream)[:n])
    assert key.secret == _fixed_bytes(8) and key.nonce == _fixed_bytes(9)


@pytest.mark.parametrize("text", ["{}", "[]", '{"secret": "zz", "nonce": "00"}', "not json"])
def test_malformed_key_is_rejected(text: str) -> None:
    with pytest.raises(WatermarkError):
        WatermarkKey.from_json(text)


# --- claims ------------------------------------------------------------------------------------


def test_claim_round_trips_and_verifies() -> None:
    owner = Ed25519PrivateKey.generate()
    claim = _claim(owner, WatermarkKey.generate())
    parsed = WatermarkClaim.from_json(claim.to_json())
    assert parsed == claim
    assert parsed.created_at == NOW


def test_claim_with_tampered_field_is_rejected() -> None:
    claim = _claim(Ed25519PrivateKey.generate(), WatermarkKey.generate())
    data = json.loads(claim.to_json())
    data["n_bits"] = 32
    with pytest.raises(WatermarkError, match="signature"):
        WatermarkClaim.from_json(json.dumps(data))


def test_claim_with_flipped_signature_bit_is_rejected() -> None:
    claim = _claim(Ed25519PrivateKey.generate(), WatermarkKey.generate())
    data = json.loads(claim.to_json())
    sig = bytearray(bytes.fromhex(data["signature"]))
    sig[10] ^= 1
    data["signature"] = sig.hex()
    with pytest.raises(WatermarkError, match="signature"):
        WatermarkClaim.from_json(json.dumps(data))


def test_claim_for_someone_elses_key_is_rejected() -> None:
    # Mallory signs a claim but names Alice's public key as the owner.
    alice = Ed25519PrivateKey.generate()
    claim = _claim(Ed25519PrivateKey.generate(), WatermarkKey.generate())
    forged = dataclasses.replace(
        claim, owner_public_key=_claim(alice, claim_key()).owner_public_key
    )
    with pytest.raises(WatermarkError, match="signature"):
        WatermarkClaim.from_json(forged.to_json())
    with pytest.raises(WatermarkError):
        forged.verify_signature()


def claim_key() -> WatermarkKey:
    return WatermarkKey(_fixed_bytes(11), _fixed_bytes(12))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("version", "veil-wm-claim-v0"),
        ("n_bits", "64"),
        ("layer", {"kind": "lstm", "weight_shape": [1, 2], "occurrence": 0}),
        ("projection", {"scheme": "other", "reduce": "centered", "dim": 3}),
        ("created_at", "yesterday"),
        ("commitment", "abcd"),
    ],
)
def test_claim_with_malformed_field_is_rejected(field: str, value: object) -> None:
    data = json.loads(_claim(Ed25519PrivateKey.generate(), claim_key()).to_json())
    data[field] = value
    with pytest.raises(WatermarkError):
        WatermarkClaim.from_json(json.dumps(data))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_claim_parser_only_raises_watermark_error(blob: bytes | str) -> None:
    with contextlib.suppress(WatermarkError):
        WatermarkClaim.from_json(blob)


# --- trigger sets and layer locators -----------------------------------------------------------


def test_trigger_set_is_deterministic_and_keyed() -> None:
    a = derive_trigger_set(_fixed_bytes(1), 50, 10, (1, 8, 8), 0.0, 1.0)
    b = derive_trigger_set(_fixed_bytes(1), 50, 10, (1, 8, 8), 0.0, 1.0)
    c = derive_trigger_set(_fixed_bytes(2), 50, 10, (1, 8, 8), 0.0, 1.0)
    assert a.inputs.shape == (50, 1, 8, 8) and a.labels.shape == (50,)
    assert a.commitment() == b.commitment() != c.commitment()
    assert a.inputs.min() >= 0.0 and a.inputs.max() < 1.0
    assert a.labels.min() >= 0 and a.labels.max() < 10
    assert len(set(a.labels.tolist())) > 3


def test_trigger_params_validate() -> None:
    with pytest.raises(WatermarkError):
        TriggerParams(count=0, num_classes=10, input_shape=(64,), low=0, high=1,
                      commitment=bytes(32))  # fmt: skip
    with pytest.raises(WatermarkError):
        TriggerParams(count=4, num_classes=10, input_shape=(64,), low=1, high=1,
                      commitment=bytes(32))  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        {"kind": "dense", "weight_shape": [3, 4, 5], "occurrence": 0},
        {"kind": "conv", "weight_shape": [3, 4], "occurrence": 0},
        {"kind": "dense", "weight_shape": [3, 4], "occurrence": -1},
        {"kind": "dense", "weight_shape": [3, 4]},
        {"kind": "dense", "weight_shape": "3x4", "occurrence": 0},
    ],
)
def test_malformed_layer_locator_is_rejected(data: dict[str, object]) -> None:
    with pytest.raises(WatermarkError):
        LayerLocator.from_dict(data)


def test_public_api_is_curated_and_light() -> None:
    assert sorted(watermark.__all__) == sorted(set(watermark.__all__))
    for name in watermark.__all__:
        assert getattr(watermark, name) is not None
    import subprocess
    import sys

    # Importing the package and registering the CLI loads neither torch nor onnx, and still works
    # where onnx is missing (the light SDK's `veil` command loads every entry point).
    probe = (
        "import sys, argparse; sys.modules['onnx'] = None; "
        "import veil.watermark, veil.watermark.cli; "
        "veil.watermark.cli.register(argparse.ArgumentParser().add_subparsers()); "
        "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if sys.modules.get(m)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=300))
def test_verify_and_report_parsers_only_raise_watermark_error(blob: bytes) -> None:
    from veil.watermark import VerificationReport, verify

    claim = _claim(Ed25519PrivateKey.generate(), claim_key())
    with pytest.raises(WatermarkError):
        verify(blob, claim, claim_key())
    with pytest.raises(WatermarkError):
        VerificationReport.from_json(blob)
