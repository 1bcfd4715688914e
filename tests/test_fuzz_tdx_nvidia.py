"""Fuzz every TDX / NVIDIA parser (and the verifiers behind them): only VeilError may escape."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veil.sdk.attestation.nvidia import SpdmEvidence, verify_rim, verify_spdm_signature
from veil.sdk.attestation.tdx import TdxCollateral, TdxPolicy, TdxQuote, verify_tdx_signature
from veil.sdk.attestation.tdx._collateral import QeIdentity, TcbInfo
from veil.sdk.attestation.tdx._x509 import load_certificates, load_crl
from veil.sdk.errors import VeilError

VECTORS = Path(__file__).resolve().parent / "vectors"
NOW = datetime(2026, 2, 5, tzinfo=UTC)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _only_veil_errors(fn: Callable[[], object]) -> None:
    with contextlib.suppress(VeilError):  # anything else propagates and fails the test
        fn()


def _mutate(seed: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(seed)
    for pos, val in edits:
        out[pos % len(out)] = val
    return bytes(out[:cut] if cut is not None else out)


_EDITS = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=6)
_CUT = st.one_of(st.none(), st.integers(0, 12000))

_QUOTE = (VECTORS / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes()
_QUOTE_V4 = (VECTORS / "tdx/teekit/tdx-v4-edgeless.dat").read_bytes()
_TCB = (VECTORS / "tdx/tinfoil-collateral/tcb_info_90c06f000000.json").read_bytes()
_QE = (VECTORS / "tdx/tinfoil-collateral/qe_identity.json").read_bytes()
_NV = VECTORS / "nvidia-gpu/nvtrust"
_GPU = bytes.fromhex((_NV / "hopperAttestationReport.txt").read_text().strip())
_GPU_CHAIN = (_NV / "hopperCertChain.txt").read_bytes()
_RIM = (_NV / "Driver_RIM_test_no_gpu.swidtag").read_bytes()
_ROOTS = TdxPolicy.production().roots


@FUZZ
@given(st.binary(max_size=6000))
def test_random_bytes_tdx_quote(data: bytes) -> None:
    _only_veil_errors(lambda: TdxQuote.from_bytes(data))


@FUZZ
@given(st.sampled_from([_QUOTE, _QUOTE_V4]), _EDITS, _CUT)
def test_mutated_tdx_quote_parse_and_verify(
    seed: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = _mutate(seed, edits, cut)
    _only_veil_errors(lambda: verify_tdx_signature(TdxQuote.from_bytes(data), _ROOTS, NOW))


@FUZZ
@given(st.sampled_from([_TCB, _QE]), _EDITS, _CUT)
def test_mutated_collateral_json(
    seed: bytes, edits: list[tuple[int, int]], cut: int | None
) -> None:
    data = _mutate(seed, edits, cut)
    _only_veil_errors(lambda: TcbInfo.from_json(data))
    _only_veil_errors(lambda: QeIdentity.from_json(data))
    _only_veil_errors(lambda: TdxCollateral.from_files([("x", data)]))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(_JSON, st.sampled_from(["tcbInfo", "enclaveIdentity"]))
def test_structured_json_collateral(inner: object, key: str) -> None:
    doc = json.dumps({key: inner, "signature": "00" * 64}).encode()
    _only_veil_errors(lambda: TdxCollateral.from_files([("x", doc)]))


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes_collateral_files(data: bytes) -> None:
    _only_veil_errors(lambda: TdxCollateral.from_files([("x", data)]))
    _only_veil_errors(lambda: load_certificates(data, "fuzz"))
    _only_veil_errors(lambda: load_crl(data, "fuzz"))


@FUZZ
@given(st.binary(max_size=5000))
def test_random_bytes_spdm(data: bytes) -> None:
    _only_veil_errors(lambda: SpdmEvidence.from_bytes(data))


@FUZZ
@given(_EDITS, _CUT)
def test_mutated_spdm_parse_and_verify(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = _mutate(_GPU, edits, cut)
    _only_veil_errors(lambda: verify_spdm_signature(data, _GPU_CHAIN, now=NOW))


@settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(_EDITS, st.one_of(st.none(), st.integers(0, 21000)))
def test_mutated_rim(edits: list[tuple[int, int]], cut: int | None) -> None:
    data = _mutate(_RIM, edits, cut)
    _only_veil_errors(lambda: verify_rim(data, now=datetime(2025, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize("data", [b"", b"\x00", b"<a/>", b"-----BEGIN CERTIFICATE-----\n", b"{}"])
def test_edge_inputs(data: bytes) -> None:
    for fn in (TdxQuote.from_bytes, SpdmEvidence.from_bytes, TcbInfo.from_json):
        with pytest.raises(VeilError):
            fn(data)
