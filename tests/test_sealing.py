"""Sealing: RFC 9180 conformance of the HPKE suite, and one test per tampering of our framing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# pyca keeps this hook for RFC vector tests: the vectors carry a non-empty AAD.
from cryptography.hazmat.bindings._rust import openssl as _rust_openssl
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import x25519

from veil.sdk import DecryptionError
from veil.sdk.protocol import Suite, chunk_aad, request_info, response_aad
from veil.sdk.sealing import SealedCall, decrypt_chunk, encrypt_chunk, open_response, seal_response

_decrypt_with_aad = _rust_openssl.hpke._decrypt_with_aad

AEADS = {1: hpke.AEAD.AES_128_GCM, 2: hpke.AEAD.AES_256_GCM, 3: hpke.AEAD.CHACHA20_POLY1305}


def _base_mode_vectors(vectors: Path) -> list[dict[str, object]]:
    entries = json.loads((vectors / "hpke/rfc9180_x25519_hkdfsha256_subset.json").read_text())
    return [e for e in entries if e["mode"] == 0 and e["aead_id"] in AEADS]


def test_rfc9180_base_mode_vectors_open_with_cryptography_hpke(vectors: Path) -> None:
    """Our suite is RFC 9180 base mode: the official vectors decrypt (enc ‖ ct wire form)."""
    cases = _base_mode_vectors(vectors)
    assert {c["aead_id"] for c in cases} == {1, 2, 3}
    for case in cases:
        suite = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, AEADS[case["aead_id"]])  # type: ignore[index]
        sk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(case["skRm"]))  # type: ignore[arg-type]
        assert sk.public_key().public_bytes_raw().hex() == case["pkRm"]
        first = case["encryptions"][0]  # type: ignore[index]
        wire = bytes.fromhex(case["enc"]) + bytes.fromhex(first["ct"])  # type: ignore[arg-type]
        pt = _decrypt_with_aad(
            suite,
            wire,
            sk,
            bytes.fromhex(case["info"]),
            bytes.fromhex(first["aad"]),  # type: ignore[arg-type]
        )
        assert pt == bytes.fromhex(first["pt"])


def test_veil_suite_is_the_rfc_aes256gcm_suite(vectors: Path) -> None:
    case = next(c for c in _base_mode_vectors(vectors) if c["aead_id"] == 2)
    sk = x25519.X25519PrivateKey.from_private_bytes(bytes.fromhex(case["skRm"]))  # type: ignore[arg-type]
    first = case["encryptions"][0]  # type: ignore[index]
    wire = bytes.fromhex(case["enc"]) + bytes.fromhex(first["ct"])  # type: ignore[arg-type]
    pt = _decrypt_with_aad(
        Suite.X25519_SHA256_AES256GCM.hpke,
        wire,
        sk,
        bytes.fromhex(case["info"]),
        bytes.fromhex(first["aad"]),
    )  # type: ignore[arg-type]
    assert pt == bytes.fromhex(first["pt"])


INFO_FIELDS = dict(
    method="/veil.v1.InferenceService/Infer",
    tenant="acme",
    request_id=bytes(range(16)),
    timestamp_ms=1_700_000_000_000,
    claims_digest=bytes(32),
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "/veil.v1.ModelService/ListModels"),
        ("tenant", "acme2"),
        ("request_id", bytes(range(1, 17))),
        ("timestamp_ms", 1_700_000_000_001),
        ("claims_digest", b"\x01" + bytes(31)),
    ],
)
def test_each_bound_field_changes_info_and_breaks_decryption(field: str, value: object) -> None:
    sk = x25519.X25519PrivateKey.generate()
    suite = Suite.X25519_SHA256_AES256GCM.hpke
    sealed = suite.encrypt(b"payload", sk.public_key(), request_info(**INFO_FIELDS))  # type: ignore[arg-type]
    other = request_info(**{**INFO_FIELDS, field: value})  # type: ignore[arg-type]
    assert other != request_info(**INFO_FIELDS)  # type: ignore[arg-type]
    with pytest.raises(Exception):
        suite.decrypt(sealed, sk, other)


def test_info_fields_are_length_prefixed_so_they_cannot_shift() -> None:
    a = request_info(**{**INFO_FIELDS, "tenant": "ab", "method": "c"})  # type: ignore[arg-type]
    b = request_info(**{**INFO_FIELDS, "tenant": "a", "method": "bc"})  # type: ignore[arg-type]
    assert a != b


def _call(key: bytes = bytes(32)) -> SealedCall:
    from veil.v1 import common_pb2

    return SealedCall(
        request=common_pb2.SealedRequest(), method="/m", request_id=b"r" * 16, response_key=key
    )


def test_response_round_trip_and_tampering() -> None:
    call = _call(b"k" * 32)
    sealed = seal_response(
        call.response_key, method=call.method, request_id=call.request_id, payload=b"out"
    )
    assert open_response(call, sealed).payload == b"out"
    for mutate in (
        lambda s: setattr(s, "ciphertext", s.ciphertext[:-1] + bytes([s.ciphertext[-1] ^ 1])),
        lambda s: setattr(s, "nonce", bytes(12)),
        lambda s: setattr(s, "request_id", b"x" * 16),
        lambda s: setattr(s, "ciphertext", s.ciphertext[:5]),
    ):
        bad = type(sealed)()
        bad.CopyFrom(sealed)
        mutate(bad)
        with pytest.raises(DecryptionError, match="could not be opened"):
            open_response(call, bad)
    with pytest.raises(DecryptionError):
        open_response(_call(b"w" * 32), sealed)  # wrong response key


def test_response_for_another_method_does_not_open() -> None:
    call = _call(b"k" * 32)
    sealed = seal_response(
        call.response_key, method="/other", request_id=call.request_id, payload=b"out"
    )
    assert response_aad(method="/other", request_id=call.request_id) != response_aad(
        method="/m", request_id=call.request_id
    )
    with pytest.raises(DecryptionError):
        open_response(call, sealed)


def test_chunks_detect_reorder_truncation_and_splicing() -> None:
    key, rid = b"m" * 32, b"i" * 16
    c0 = encrypt_chunk(key, request_id=rid, seq=0, final=False, data=b"first")
    c1 = encrypt_chunk(key, request_id=rid, seq=1, final=True, data=b"last")
    assert decrypt_chunk(key, request_id=rid, seq=0, final=False, ciphertext=c0) == b"first"
    with pytest.raises(DecryptionError):  # reordered: chunk 1 presented as chunk 0
        decrypt_chunk(key, request_id=rid, seq=0, final=True, ciphertext=c1)
    with pytest.raises(DecryptionError):  # truncated: a middle chunk presented as final
        decrypt_chunk(key, request_id=rid, seq=0, final=True, ciphertext=c0)
    with pytest.raises(DecryptionError):  # spliced from another upload
        decrypt_chunk(key, request_id=b"j" * 16, seq=0, final=False, ciphertext=c0)
    assert chunk_aad(request_id=rid, seq=1, final=True) != chunk_aad(
        request_id=rid, seq=1, final=False
    )
