"""Write the protocol vectors of docs/PROTOCOL.md section 9 to tests/vectors/protocol/.

Every input is fixed (keys, nonces, ids, times: ``fixed(label, n)`` = SHAKE-256 of
``"veil-vector/" + label``), so the output is the same on every run; both SDKs replay it
(``tests/test_protocol_vectors.py``, ``node/test/vectors.test.ts``) and the Python test fails
when this script's output drifts from the committed files.

- ``suite1.json``: a sealed ``Infer`` call with suite 1 byte by byte — claims, REPORT_DATA, HPKE
  ``info``, the RequestBody, ``enc ‖ ciphertext`` (HPKE with a fixed ephemeral key), the
  SealedRequest; the response AAD and ciphertext with its signed receipt; a sealed error; and the
  chunks of an upload (nonces, AADs, ciphertexts).
- ``suite2.json``: a fixed X-Wing key pair (seed, expanded keys, public key) and a request sealed
  to it. pyca's HPKE draws the encapsulation randomness itself, so these ``enc ‖ ciphertext`` bytes
  are a sample that must *open* to the fixed RequestBody: a re-run keeps the committed sample
  while it still opens, and the test opens it rather than comparing bytes.
- ``snp_verdicts.json``: every real SEV-SNP report in ``tests/vectors/sev-snp``, and mutations of
  each, with the verdict of ``veil.sdk.verify_snp_report`` at a fixed time; the Node verifier
  must reach the same verdict on each.
- ``receipts_v2.json``: a batch of v2 receipts (protocol 1.2) under the suite-1 log key, and
  tampered copies, each with the verdict of ``veil.sdk.audit.verify_receipt``.
- ``sessions.json``: a sealing session (protocol 1.4) under the suite-1 claims and tenant: the
  session secret and what both ends derive from it (HKDF-SHA256), the opening ``RequestBody`` and
  ``ResponseBody``, then one ``Infer`` request sealed in the session at numbers 1, 2 and 2^32 - 1
  (nonce, AAD, AES-256-GCM ``sealed``, the ``SealedRequest``, the receipt's session request
  digest) and a response under the session's response key with its signed receipt. Every byte
  is computed here from the primitives (HKDF, AES-GCM, SHA-256), not with the SDK's functions,
  so the test holds the SDK to the document's layouts.
- ``replicas.json``: a replicated deployment (protocol 1.3): the shared claims naming the
  coordinator key and the manifest, a coordinator's ``ReplicaCertificate`` for a replica, a v2
  receipt under the certified replica log key, and mutations of the certificate, each with the
  verdict of ``veil.sdk.replicas.verify_replica_certificate``. The replica's evidence comes from
  the simulated TEE, whose keys are random: like suite 2, a re-run keeps the committed sample
  while it still verifies; everything else is derived from fixed keys.

Suite 1 is sealed here with a derandomized RFC 9180 base-mode ``Seal`` (``hpke_seal_x25519``,
X25519 and HKDF from ``cryptography``), because no library lets a caller fix the ephemeral key;
the test checks it against the RFC 9180 vectors and opens its output with ``cryptography``'s HPKE.

Usage: ``python scripts/gen_protocol_vectors.py`` (writes), ``--check`` (exit 1 on drift).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import struct
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk import AttestationError, AttestationPolicy, SnpCertChain, VeilError, verify_snp_report
from veil.sdk.attestation import amd_roots
from veil.sdk.attestation.snp_report import TcbVersion
from veil.sdk.audit import Receipt, Verifier, batch_receipts, hash_leaf, key_hash, verify_receipt
from veil.sdk.evidence import Evidence, to_ms, verify_enclave
from veil.sdk.protocol import (
    MAX_SESSION_SEQ,
    Method,
    chunk_aad,
    chunk_nonce,
    claims_digest,
    report_data_for,
    request_info,
    response_aad,
)
from veil.sdk.replicas import (
    CERTIFICATE_CONTEXT,
    MANIFEST_CONTEXT,
    Manifest,
    certificate_statement,
    verify_manifest,
    verify_replica_certificate,
)
from veil.v1 import attestation_pb2, common_pb2, inference_pb2, models_pb2, scaleout_pb2

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "vectors" / "protocol"
SNP_DIR = ROOT / "tests" / "vectors" / "sev-snp"
SNP_NOW = datetime(2026, 1, 15, tzinfo=UTC)
LOG_NAME = "veil-enclave"
TENANT = "default"


def fixed(label: str, n: int) -> bytes:
    """``n`` fixed bytes for ``label``: SHAKE-256("veil-vector/" ‖ label)."""
    return hashlib.shake_256(f"veil-vector/{label}".encode()).digest(n)


# -- RFC 9180 base mode, single shot, with a fixed ephemeral key (suite 1 only) -------------

_KEM_X25519 = 0x0020
_KDF_HKDF_SHA256 = 0x0001
_AEAD_AES256GCM = 0x0002


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, b"HPKE-v1" + suite_id + label + ikm, hashlib.sha256).digest()


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info
    return HKDFExpand(hashes.SHA256(), length, labeled).derive(prk)


def derive_x25519(ikm: bytes) -> x25519.X25519PrivateKey:
    """RFC 9180 DeriveKeyPair for DHKEM(X25519, HKDF-SHA256)."""
    kem_id = b"KEM" + struct.pack(">H", _KEM_X25519)
    prk = _labeled_extract(kem_id, b"", b"dkp_prk", ikm)
    return x25519.X25519PrivateKey.from_private_bytes(_labeled_expand(kem_id, prk, b"sk", b"", 32))


def hpke_seal_x25519(pk_r: bytes, info: bytes, aad: bytes, plaintext: bytes, ikm_e: bytes) -> bytes:
    """``enc ‖ ciphertext`` of RFC 9180 SealBase (suite 1), skE = DeriveKeyPair(ikm_e)."""
    kem_id = b"KEM" + struct.pack(">H", _KEM_X25519)
    suite_id = b"HPKE" + struct.pack(">HHH", _KEM_X25519, _KDF_HKDF_SHA256, _AEAD_AES256GCM)
    sk_e = derive_x25519(ikm_e)
    enc = sk_e.public_key().public_bytes_raw()
    dh = sk_e.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    eae_prk = _labeled_extract(kem_id, b"", b"eae_prk", dh)
    shared = _labeled_expand(kem_id, eae_prk, b"shared_secret", enc + pk_r, 32)
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared, b"secret", b"")
    key = _labeled_expand(suite_id, secret, b"key", context, 32)
    base_nonce = _labeled_expand(suite_id, secret, b"base_nonce", context, 12)
    return enc + AESGCM(key).encrypt(base_nonce, plaintext, aad)


# -- X-Wing keys (suite 2) ---------------------------------------------------------------------


def xwing_keys(seed: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
    """X-Wing (draft-connolly-cfrg-xwing-kem-06) key expansion: SHAKE256(seed, 96) = d ‖ z ‖ skX."""
    expanded = hashlib.shake_256(seed).digest(96)
    return (
        mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        x25519.X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


SUITE2 = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


# -- signed notes ------------------------------------------------------------------------------


def sign_note(text: str, name: str, key: ed25519.Ed25519PrivateKey) -> str:
    """A C2SP signed note of ``text`` by ``name`` (Ed25519 signatures are deterministic)."""
    public = key.public_key().public_bytes_raw()
    blob = key_hash(name, public) + key.sign(text.encode())
    return f"{text}\n\u2014 {name} {base64.b64encode(blob).decode()}\n"


def vkey(name: str, public: bytes) -> str:
    encoded = base64.b64encode(bytes([1]) + public).decode()
    return f"{name}+{key_hash(name, public).hex()}+{encoded}"


# -- suite 1: one sealed inference, byte by byte -----------------------------------------------


def _claims(keys: list[tuple[int, bytes]], log_public: bytes) -> bytes:
    return attestation_pb2.EnclaveClaims(
        protocol_version=1,
        key_id="vector-epoch-1",
        keys=[attestation_pb2.SuiteKey(suite=s, public_key=k) for s, k in keys],
        issued_at_ms=1_768_435_200_000,  # 2026-01-15T00:00:00Z
        expires_at_ms=1_768_521_600_000,  # 2026-01-16T00:00:00Z
        measurement_hex=fixed("measurement", 48).hex(),
        audit_log_key=log_public,
        audit_log_origin=LOG_NAME,
    ).SerializeToString()


def _sealed_response(
    key: bytes, nonce: bytes, aad: bytes, request_id: bytes, body: common_pb2.ResponseBody
) -> common_pb2.SealedResponse:
    """A unary (final, seq 0) response: ``body`` under AES-256-GCM (docs/PROTOCOL.md, 5)."""
    ciphertext = AESGCM(key).encrypt(nonce, body.SerializeToString(), aad)
    return common_pb2.SealedResponse(
        request_id=request_id, nonce=nonce, ciphertext=ciphertext, seq=0, final=True
    )


def _response_entries(
    payload: bytes,
    model_bytes: bytes,
    body: common_pb2.ResponseBody,
    aad: bytes,
    sealed: common_pb2.SealedResponse,
) -> dict[str, Any]:
    """What a vector file says of a sealed unary answer, from its receipt on (in file order)."""
    return {
        "receipt": body.receipt,
        "response_digest": hashlib.sha256(payload).hexdigest(),
        "model_digest": hashlib.sha256(model_bytes).hexdigest(),
        "response_body": body.SerializeToString().hex(),
        "nonce": sealed.nonce.hex(),
        "aad": aad.hex(),
        "ciphertext": sealed.ciphertext.hex(),
        "sealed_response": sealed.SerializeToString().hex(),
    }


def suite1() -> dict[str, Any]:
    enclave_sk = derive_x25519(fixed("enclave-x25519-ikm", 32))
    enclave_pk = enclave_sk.public_key().public_bytes_raw()
    log_key = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("audit-log-ed25519", 32))
    log_public = log_key.public_key().public_bytes_raw()
    claims = _claims([(1, enclave_pk)], log_public)
    nonce = fixed("attestation-nonce", 32)
    digest = claims_digest(claims)

    method = Method.INFER.value
    api_key = "veil_vector-api-key"
    request_id = fixed("request-id", 16)
    timestamp_ms = 1_768_478_400_000  # 2026-01-15T12:00:00Z
    response_key = fixed("response-key", 32)
    ikm_e = fixed("hpke-ephemeral-ikm", 32)
    infer = inference_pb2.InferRequest(
        model="credit@1",
        inputs={
            "x": common_pb2.Tensor(
                dtype="float32", shape=[1, 2], data=struct.pack("<2f", 0.5, -1.25)
            )
        },
    )
    payload = infer.SerializeToString()
    body = common_pb2.RequestBody(response_key=response_key, api_key=api_key, payload=payload)
    info = request_info(
        method=method,
        tenant=TENANT,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=digest,
    )
    sealed = hpke_seal_x25519(enclave_pk, info, b"", body.SerializeToString(), ikm_e)
    request = common_pb2.SealedRequest(
        version=1,
        suite=1,
        tenant=TENANT,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=digest,
        sealed=sealed,
    )

    model_bytes = fixed("model-file", 40)
    response = inference_pb2.InferResponse(
        model="credit@1",
        outputs={
            "probs": common_pb2.Tensor(
                dtype="float32", shape=[1, 2], data=struct.pack("<2f", 0.75, 0.25)
            )
        },
    )
    response_payload = response.SerializeToString()
    receipt = Receipt(
        log=f"{LOG_NAME}/{TENANT}",
        tenant=TENANT,
        leaf_index=41,
        leaf_hash=hash_leaf(b'{"event":"inference","vector":true}'),
        time="2026-01-15T12:00:00.250000Z",
        request_digest=hashlib.sha256(sealed).hexdigest(),
        response_digest=hashlib.sha256(response_payload).hexdigest(),
        model_digest=hashlib.sha256(model_bytes).hexdigest(),
    )
    receipt_note = sign_note(receipt.body(), LOG_NAME, log_key)
    response_body = common_pb2.ResponseBody(payload=response_payload, receipt=receipt_note)
    response_nonce = fixed("response-nonce", 12)
    aad = response_aad(method=method, request_id=request_id, seq=0, final=True)
    sealed_response = _sealed_response(response_key, response_nonce, aad, request_id, response_body)

    error_body = common_pb2.ResponseBody(
        error=common_pb2.ErrorBody(
            code="NOT_FOUND", reason="not-found", message="model 'credit' not found"
        )
    )
    error_nonce = fixed("error-nonce", 12)
    error_ct = AESGCM(response_key).encrypt(error_nonce, error_body.SerializeToString(), aad)
    sealed_error = common_pb2.SealedResponse(
        request_id=request_id, nonce=error_nonce, ciphertext=error_ct, seq=0, final=True
    )

    upload_request_id = fixed("upload-request-id", 16)
    model_key = fixed("model-key", 32)
    upload_header = models_pb2.UploadHeader(
        name="credit",
        model_key=model_key,
        size=len(model_bytes),
        sha256=hashlib.sha256(model_bytes).digest(),
    )
    chunk_size = 16
    pieces = [model_bytes[i : i + chunk_size] for i in range(0, len(model_bytes), chunk_size)]
    chunks = []
    for seq, piece in enumerate(pieces):
        final = seq == len(pieces) - 1
        c_aad = chunk_aad(request_id=upload_request_id, seq=seq, final=final)
        chunks.append(
            {
                "seq": seq,
                "final": final,
                "plaintext": piece.hex(),
                "nonce": chunk_nonce(seq).hex(),
                "aad": c_aad.hex(),
                "ciphertext": AESGCM(model_key).encrypt(chunk_nonce(seq), piece, c_aad).hex(),
            }
        )

    return {
        "description": "docs/PROTOCOL.md section 9: a sealed Infer call with suite 1, byte by byte",
        "attestation": {
            "enclave_x25519_ikm": fixed("enclave-x25519-ikm", 32).hex(),
            "enclave_x25519_secret": enclave_sk.private_bytes_raw().hex(),
            "enclave_x25519_public": enclave_pk.hex(),
            "audit_log_ed25519_seed": fixed("audit-log-ed25519", 32).hex(),
            "audit_log_public": log_public.hex(),
            "audit_log_vkey": vkey(LOG_NAME, log_public),
            "claims": claims.hex(),
            "claims_digest": digest.hex(),
            "nonce": nonce.hex(),
            "report_data": report_data_for(nonce, digest).hex(),
        },
        "request": {
            "method": method,
            "tenant": TENANT,
            "api_key": api_key,
            "request_id": request_id.hex(),
            "timestamp_ms": timestamp_ms,
            "response_key": response_key.hex(),
            "payload": payload.hex(),
            "request_body": body.SerializeToString().hex(),
            "info": info.hex(),
            "hpke_ephemeral_ikm": ikm_e.hex(),
            "hpke_enc": sealed[:32].hex(),
            "sealed": sealed.hex(),
            "sealed_request": request.SerializeToString().hex(),
            "request_digest": hashlib.sha256(sealed).hexdigest(),
        },
        "response": {
            "payload": response_payload.hex(),
            "receipt_body": receipt.body(),
            **_response_entries(response_payload, model_bytes, response_body, aad, sealed_response),
        },
        "sealed_error": {
            "error_body": error_body.SerializeToString().hex(),
            "nonce": error_nonce.hex(),
            "ciphertext": error_ct.hex(),
            "trailer": sealed_error.SerializeToString().hex(),
        },
        "upload": {
            "request_id": upload_request_id.hex(),
            "model_key": model_key.hex(),
            "model": model_bytes.hex(),
            "header": upload_header.SerializeToString().hex(),
            "chunk_size": chunk_size,
            "chunks": chunks,
        },
    }


# -- suite 2: a fixed X-Wing key and a request sealed to it ------------------------------------


def _opens_suite2(sealed: bytes, sk: hpke.MLKEM768X25519PrivateKey, info: bytes) -> bytes | None:
    try:
        return SUITE2.decrypt(sealed, sk, info)
    except Exception:  # any failure: not a valid sample for these keys
        return None


def suite2(previous: dict[str, Any] | None) -> dict[str, Any]:
    seed = fixed("enclave-xwing-seed", 32)
    m_key, x_key = xwing_keys(seed)
    public = m_key.public_key().public_bytes_raw() + x_key.public_key().public_bytes_raw()
    sk = hpke.MLKEM768X25519PrivateKey(m_key, x_key)
    claims = _claims(
        [
            (1, derive_x25519(fixed("enclave-x25519-ikm", 32)).public_key().public_bytes_raw()),
            (2, public),
        ],
        bytes(32),
    )
    method = Method.LIST_MODELS.value
    request_id = fixed("suite2-request-id", 16)
    timestamp_ms = 1_768_478_400_000
    body = common_pb2.RequestBody(
        response_key=fixed("suite2-response-key", 32),
        api_key="veil_vector-api-key",
        payload=models_pb2.ListModelsRequest().SerializeToString(),
    ).SerializeToString()
    info = request_info(
        method=method,
        tenant=TENANT,
        request_id=request_id,
        timestamp_ms=timestamp_ms,
        claims_digest=claims_digest(claims),
    )
    sealed = None
    if previous is not None:
        candidate = bytes.fromhex(previous.get("request", {}).get("sealed", ""))
        if _opens_suite2(candidate, sk, info) == body:
            sealed = candidate
    if sealed is None:
        sealed = SUITE2.encrypt(
            body, hpke.MLKEM768X25519PublicKey(m_key.public_key(), x_key.public_key()), info
        )
    expanded = hashlib.shake_256(seed).digest(96)
    return {
        "description": (
            "suite 2 (X-Wing, draft-connolly-cfrg-xwing-kem-06, HPKE kem 0x647a): a fixed key "
            "pair and a request sealed to it; `sealed` is a sample that must open to "
            "`request_body` (its encapsulation randomness is not fixed)"
        ),
        "xwing_seed": seed.hex(),
        "mlkem_seed_dz": expanded[:64].hex(),
        "x25519_secret": expanded[64:].hex(),
        "public_key": public.hex(),
        "claims": claims.hex(),
        "claims_digest": claims_digest(claims).hex(),
        "request": {
            "method": method,
            "tenant": TENANT,
            "request_id": request_id.hex(),
            "timestamp_ms": timestamp_ms,
            "info": info.hex(),
            "request_body": body.hex(),
            "enc_length": 1120,
            "sealed": sealed.hex(),
        },
    }


# -- sessions (protocol 1.4): keys, requests at three numbers, a response ------------------------


def _lp(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


SESSION_SEQS = (1, 2, MAX_SESSION_SEQ)


def sessions() -> dict[str, Any]:
    enclave_pk = derive_x25519(fixed("enclave-x25519-ikm", 32)).public_key().public_bytes_raw()
    log_key = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("audit-log-ed25519", 32))
    log_public = log_key.public_key().public_bytes_raw()
    claims = _claims([(1, enclave_pk)], log_public)  # suite1.json's claims
    digest = claims_digest(claims)
    api_key = "veil_vector-api-key"

    # Opening: an ordinary one-shot request whose RequestBody also carries the secret.
    secret = fixed("session-secret", 32)
    open_body = common_pb2.RequestBody(
        response_key=fixed("session-open-response-key", 32),
        api_key=api_key,
        payload=models_pb2.ListModelsRequest().SerializeToString(),
        receipt_version=2,
        session_secret=secret,
    )
    open_response = common_pb2.ResponseBody(
        payload=models_pb2.ListModelsResponse().SerializeToString(), session_idle_seconds=600
    )
    hkdf_info = _lp(b"veil/v1/session") + _lp(TENANT.encode())
    okm = HKDF(algorithm=hashes.SHA256(), length=92, salt=digest, info=hkdf_info).derive(secret)
    session_id, request_key, request_iv, response_key = okm[:16], okm[16:48], okm[48:60], okm[60:]

    method = Method.INFER.value
    request_id = fixed("session-request-id", 16)
    timestamp_ms = 1_768_478_460_000  # 2026-01-15T12:01:00Z
    payload = inference_pb2.InferRequest(
        model="credit@1",
        inputs={
            "x": common_pb2.Tensor(
                dtype="float32", shape=[1, 2], data=struct.pack("<2f", 0.5, -1.25)
            )
        },
    ).SerializeToString()
    requests: list[dict[str, Any]] = []
    for seq in SESSION_SEQS:
        nonce = (int.from_bytes(request_iv, "big") ^ seq).to_bytes(12, "big")
        aad = b"".join(
            (
                _lp(b"veil/v1/session-request"),
                _lp(method.encode()),
                _lp(TENANT.encode()),
                _lp(request_id),
                _lp(struct.pack(">q", timestamp_ms)),
                _lp(digest),
                _lp(session_id),
                struct.pack(">Q", seq),
            )
        )
        sealed = AESGCM(request_key).encrypt(nonce, payload, aad)
        tag = sealed[-16:]
        request = common_pb2.SealedRequest(
            version=1,
            suite=1,
            tenant=TENANT,
            request_id=request_id,
            timestamp_ms=timestamp_ms,
            claims_digest=digest,
            sealed=sealed,
            session_id=session_id,
            seq=seq,
        )
        request_digest = hashlib.sha256(
            _lp(b"veil/v1/session-request-digest")
            + _lp(session_id)
            + struct.pack(">Q", seq)
            + _lp(tag)
        ).hexdigest()
        requests.append(
            {
                "seq": seq,
                "nonce": nonce.hex(),
                "aad": aad.hex(),
                "sealed": sealed.hex(),
                "tag": tag.hex(),
                "sealed_request": request.SerializeToString().hex(),
                "request_digest": request_digest,
            }
        )

    # The answer to the request at number 1: section 5 under the session's response key.
    model_bytes = fixed("model-file", 40)
    response_payload = inference_pb2.InferResponse(
        model="credit@1",
        outputs={
            "probs": common_pb2.Tensor(
                dtype="float32", shape=[1, 2], data=struct.pack("<2f", 0.75, 0.25)
            )
        },
    ).SerializeToString()
    receipt = Receipt(
        log=f"{LOG_NAME}/{TENANT}",
        tenant=TENANT,
        leaf_index=42,
        leaf_hash=hash_leaf(b'{"event":"inference","session":true}'),
        time="2026-01-15T12:01:00.125000Z",
        request_digest=requests[0]["request_digest"],
        response_digest=hashlib.sha256(response_payload).hexdigest(),
        model_digest=hashlib.sha256(model_bytes).hexdigest(),
    )
    receipt_note = sign_note(receipt.body(), LOG_NAME, log_key)
    response_body = common_pb2.ResponseBody(payload=response_payload, receipt=receipt_note)
    response_nonce = fixed("session-response-nonce", 12)
    response_aad_bytes = response_aad(method=method, request_id=request_id, seq=0, final=True)
    sealed_response = _sealed_response(
        response_key, response_nonce, response_aad_bytes, request_id, response_body
    )
    return {
        "description": (
            "docs/PROTOCOL.md 4.5 (protocol 1.4): a sealing session under suite1.json's claims "
            "and tenant; an Infer request sealed in it at numbers 1, 2 and 2^32 - 1 (one fixed "
            "request_id and timestamp), and the answer to number 1 under the session's response key"
        ),
        "tenant": TENANT,
        "claims_digest": digest.hex(),
        "audit_log_vkey": vkey(LOG_NAME, log_public),
        "opening": {
            "request_body": open_body.SerializeToString().hex(),
            "response_body": open_response.SerializeToString().hex(),
            "session_idle_seconds": 600,
        },
        "session_secret": secret.hex(),
        "hkdf_info": hkdf_info.hex(),
        "okm": okm.hex(),
        "session_id": session_id.hex(),
        "request_key": request_key.hex(),
        "request_iv": request_iv.hex(),
        "response_key": response_key.hex(),
        "method": method,
        "request_id": request_id.hex(),
        "timestamp_ms": timestamp_ms,
        "payload": payload.hex(),
        "requests": requests,
        "response": {
            "seq": SESSION_SEQS[0],
            "payload": response_payload.hex(),
            **_response_entries(
                response_payload, model_bytes, response_body, response_aad_bytes, sealed_response
            ),
        },
    }


# -- SEV-SNP verdicts on real reports and their mutations --------------------------------------

# (report, certificate files, name): every report of tests/vectors/sev-snp that has a VCEK.
SNP_REPORTS = [
    (
        "virtee-sev/report_milan.bin",
        ["virtee-sev/vcek_milan.der", "virtee-sev/cert_chain_milan.pem"],
    ),
    (
        "teekit-gcp/sev-gcp.bin",
        ["teekit-gcp/sev-gcp-vcek.pem", "teekit-gcp/sev-gcp-cert-chain.pem"],
    ),
    (
        "teekit-gcp/sev-gcp-reportdata.bin",
        ["teekit-gcp/sev-gcp-vcek.pem", "teekit-gcp/sev-gcp-cert-chain.pem"],
    ),
    (
        "teekit-gcp/sev-gcp-x25519-bound.bin",
        ["teekit-gcp/sev-gcp-x25519-vcek.pem", "teekit-gcp/sev-gcp-cert-chain.pem"],
    ),
    ("routex-lua/report-genoa-v5.bin", ["routex-lua/vcek-chain-genoa-v5.pem"]),
    ("routex-lua/report-genoa-v3.bin", ["routex-lua/vcek-chain-genoa.pem"]),
    ("routex-lua/report-milan-v3.bin", ["routex-lua/vcek-chain-milan.pem"]),
    ("routex-lua/report-turin.bin", ["routex-lua/vcek-chain-turin.pem"]),
    (
        "go-sev-guest/attestation.bin",
        ["go-sev-guest/vcek_milan.der", "go-sev-guest/ask_ark_milan.pem"],
    ),
]
# (offset, xor mask, field): one flip per field of the report, signed and unsigned parts.
SNP_FLIPS = [
    (0x00, 0x01, "VERSION"),
    (0x00, 0x08, "VERSION out of range"),
    (0x04, 0x01, "GUEST_SVN"),
    (0x08, 0x01, "POLICY"),
    (0x0A, 0x08, "POLICY DEBUG bit"),
    (0x10, 0x01, "FAMILY_ID"),
    (0x30, 0x01, "VMPL"),
    (0x34, 0x01, "SIGNATURE_ALGO"),
    (0x38, 0x01, "CURRENT_TCB"),
    (0x48, 0x02, "FLAGS MASK_CHIP_ID"),
    (0x48, 0x04, "FLAGS SIGNING_KEY"),
    (0x50, 0x01, "REPORT_DATA"),
    (0x90, 0x01, "MEASUREMENT"),
    (0xC0, 0x01, "HOST_DATA"),
    (0x180, 0x01, "REPORTED_TCB"),
    (0x1A0, 0x01, "CHIP_ID"),
    (0x29F, 0x01, "last signed byte"),
    (0x2A0, 0x01, "SIGNATURE r"),
    (0x2E7, 0x80, "SIGNATURE r high byte"),
    (0x2E8, 0x01, "SIGNATURE s"),
    (0x400, 0x01, "reserved after the signature (unsigned)"),
]
SNP_SIZES = [0, 1183, 1185]


def _read_chain(certs: list[str]) -> SnpCertChain:
    return SnpCertChain.from_pem(*[(SNP_DIR / c).read_bytes() for c in certs])


def _snp_policy(spec: dict[str, Any]) -> AttestationPolicy:
    policy = AttestationPolicy.production(allow_any_measurement=True)
    changes: dict[str, Any] = {"require_key_binding": False}
    if "roots" in spec:
        changes["roots"] = tuple(r for r in amd_roots() if r.product.value in spec["roots"])  # type: ignore[union-attr]
    if "allow_debug" in spec:
        changes["allow_debug"] = spec["allow_debug"]
    if "measurements" in spec:
        changes["expected_measurements"] = frozenset(bytes.fromhex(m) for m in spec["measurements"])
    if "min_tcb" in spec:
        changes["min_tcb"] = TcbVersion(**spec["min_tcb"])
    if "vmpls" in spec:
        changes["allowed_vmpls"] = frozenset(spec["vmpls"])
    if "report_data" in spec:
        changes["require_key_binding"] = True
    return replace(policy, **changes)


def _verdict(case: dict[str, Any]) -> dict[str, Any]:
    raw = bytearray((SNP_DIR / case["report"]).read_bytes())
    mutation = case.get("mutation") or {}
    if "flip" in mutation:
        offset, mask = mutation["flip"]
        raw[offset] ^= mask
    if "size" in mutation:
        raw = (raw + bytes(max(0, mutation["size"] - len(raw))))[: mutation["size"]]
    policy_spec = case.get("policy", {})
    now = datetime.fromisoformat(case["now"]) if "now" in case else SNP_NOW
    report_data = policy_spec.get("report_data")
    try:
        chain = _read_chain(case["certs"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verified = verify_snp_report(
                bytes(raw),
                chain,
                _snp_policy(policy_spec),
                now=now,
                expected_report_data=bytes.fromhex(report_data) if report_data else None,
            )
    except AttestationError as exc:
        return {"ok": False, "reason": exc.reason.value}
    tcb = verified.reported_tcb
    return {
        "ok": True,
        "product": verified.product.value,
        "vmpl": verified.vmpl,
        "measurement": verified.measurement.hex(),
        "reported_tcb": {
            "bootloader": tcb.bootloader,
            "tee": tcb.tee,
            "snp": tcb.snp,
            "microcode": tcb.microcode,
            "fmc": tcb.fmc,
        },
        "root_fingerprint": verified.root_fingerprint,
    }


def snp_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for report, certs in SNP_REPORTS:
        base = {"report": report, "certs": certs}
        debug = report.startswith("go-sev-guest")
        cases.append({"name": f"{report}: as published", **base})
        if debug:
            cases.append(
                {"name": f"{report}: debug allowed", **base, "policy": {"allow_debug": True}}
            )
            continue
        for offset, mask, field in SNP_FLIPS:
            cases.append(
                {
                    "name": f"{report}: flip 0x{mask:02x} at 0x{offset:03x} ({field})",
                    **base,
                    "mutation": {"flip": [offset, mask]},
                }
            )
        for size in SNP_SIZES:
            cases.append({"name": f"{report}: {size} bytes", **base, "mutation": {"size": size}})
    # Policies, chains and clocks, on a few reports.
    milan = SNP_REPORTS[0]
    genoa = SNP_REPORTS[4]
    turin = SNP_REPORTS[7]
    gcp_vmpl1 = SNP_REPORTS[2]
    bound = SNP_REPORTS[3]
    milan_v3 = SNP_REPORTS[6]
    for report, certs in (milan, genoa, turin):
        raw = (SNP_DIR / report).read_bytes()
        measurement = raw[0x90:0xC0].hex()
        cases += [
            {
                "name": f"{report}: its measurement expected",
                "report": report,
                "certs": certs,
                "policy": {"measurements": [measurement]},
            },
            {
                "name": f"{report}: another measurement expected",
                "report": report,
                "certs": certs,
                "policy": {"measurements": ["00" * 48]},
            },
            {
                "name": f"{report}: minimum TCB above microcode",
                "report": report,
                "certs": certs,
                "policy": {"min_tcb": {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 255}},
            },
            {
                "name": f"{report}: minimum TCB of zeros",
                "report": report,
                "certs": certs,
                "policy": {"min_tcb": {"bootloader": 0, "tee": 0, "snp": 0, "microcode": 0}},
            },
            {
                "name": f"{report}: only VMPL 3 allowed",
                "report": report,
                "certs": certs,
                "policy": {"vmpls": [3]},
            },
            {
                "name": f"{report}: clock after the VCEK expired",
                "report": report,
                "certs": certs,
                "now": "2040-01-01T00:00:00+00:00",
            },
            {
                "name": f"{report}: clock before the ARK was issued",
                "report": report,
                "certs": certs,
                "now": "2015-01-01T00:00:00+00:00",
            },
            {
                "name": f"{report}: REPORT_DATA expected but different",
                "report": report,
                "certs": certs,
                "policy": {"report_data": "11" * 64},
            },
            {
                "name": f"{report}: REPORT_DATA expected and equal",
                "report": report,
                "certs": certs,
                "policy": {"report_data": raw[0x50:0x90].hex()},
            },
        ]
    cases += [
        {
            "name": "Milan report, Genoa root only",
            "report": milan[0],
            "certs": milan[1],
            "policy": {"roots": ["Genoa"]},
        },
        {
            "name": "Turin report, Milan and Genoa roots only",
            "report": turin[0],
            "certs": turin[1],
            "policy": {"roots": ["Milan", "Genoa"]},
        },
        {"name": "Genoa report with a Milan chain", "report": genoa[0], "certs": milan_v3[1]},
        {
            "name": "GCP report with another chip's VCEK",
            "report": SNP_REPORTS[1][0],
            "certs": milan_v3[1],
        },
        {
            "name": "GCP VMPL 1 report, VMPL 0 only",
            "report": gcp_vmpl1[0],
            "certs": gcp_vmpl1[1],
            "policy": {"vmpls": [0]},
        },
        {
            "name": "bound report, another report's VCEK",
            "report": bound[0],
            "certs": SNP_REPORTS[1][1],
        },
        {
            "name": "Milan report, VCEK only (ASK from the pinned root)",
            "report": milan[0],
            "certs": ["virtee-sev/vcek_milan.der"],
        },
        {
            "name": "Milan report, no VCEK (ASK and ARK only)",
            "report": milan[0],
            "certs": ["virtee-sev/cert_chain_milan.pem"],
        },
        {
            "name": "Milan report, Turin ARK in the chain",
            "report": milan[0],
            "certs": ["virtee-sev/vcek_milan.der", "virtee-sev/turin_ark.pem"],
        },
    ]
    return cases


def snp_verdicts() -> dict[str, Any]:
    cases = snp_cases()
    return {
        "description": (
            "Verdicts of veil.sdk.verify_snp_report on the real reports of tests/vectors/sev-snp "
            "and mutations of each; every SDK must reach the same one. Policy: AMD's pinned "
            "roots (or those named in `roots`), debug forbidden, any measurement, no minimum TCB, "
            "VMPLs 0-3, no REPORT_DATA binding unless `report_data` is given. `mutation.flip` "
            "= [offset, xor mask] on the report; `mutation.size` cuts or zero-pads it."
        ),
        "now": SNP_NOW.isoformat(),
        "cases": [{**case, "expect": _verdict(case)} for case in cases],
    }


# -- receipts v2 (protocol 1.2): one batch under the suite-1 log key ----------------------------


def _receipt_verdict(note: str, key: Verifier, **expected: str) -> dict[str, Any]:
    try:
        receipt = verify_receipt(note, key, **expected)
    except VeilError as exc:
        return _error(exc)
    return {"ok": True, "leaf_index": receipt.leaf_index, "request_digest": receipt.request_digest}


def _error(exc: VeilError) -> dict[str, Any]:
    reason = getattr(exc, "reason", None)
    return {
        "ok": False,
        "error": type(exc).__name__,
        "reason": reason.value if reason is not None else "",
        "message": str(exc),
    }


def _v2_batch(key: ed25519.Ed25519PrivateKey, name: str, log: str, count: int) -> list[str]:
    receipts = [
        Receipt(
            log=log,
            tenant=TENANT,
            leaf_index=100 + i,
            leaf_hash=hash_leaf(f'{{"event":"inference","n":{i}}}'.encode()),
            time=f"2026-01-15T12:00:0{i}.000000Z",
            request_digest=hashlib.sha256(fixed(f"{log}-request-{i}", 32)).hexdigest(),
            response_digest=hashlib.sha256(fixed(f"{log}-response-{i}", 32)).hexdigest(),
            model_digest=None if i % 2 else hashlib.sha256(b"model").hexdigest(),
        )
        for i in range(count)
    ]
    return batch_receipts(receipts, lambda text: sign_note(text, name, key))


def _edit_v2(text: str, part: int, edit: Callable[[str], str]) -> str:
    parts = text.split("\n", 4)
    parts[part] = edit(parts[part])
    return "\n".join(parts)


def _reposition(position: str, **changes: Any) -> str:
    doc = json.loads(position)
    doc.update(changes)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def receipts_v2() -> dict[str, Any]:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("audit-log-ed25519", 32))
    public = key.public_key().public_bytes_raw()
    other = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("other-log-ed25519", 32))
    log = f"{LOG_NAME}/{TENANT}"
    texts = _v2_batch(key, LOG_NAME, log, 5)
    verifier = Verifier.from_public_key(LOG_NAME, public)
    target = texts[2]
    line = target.split("\n")[1]
    digest = json.loads(line)["request_digest"]
    note = target.split("\n", 4)[4]
    root_text = note.split("\n")[3]
    first_proof = json.loads(target.split("\n")[2])["proof"][0]
    flipped = base64.b64encode(
        bytes([base64.b64decode(first_proof)[0] ^ 1]) + base64.b64decode(first_proof)[1:]
    ).decode()
    batch_text = f"veil-audit-receipt-batch/v2\n{log}\n5\n{root_text}\n"
    cases: list[tuple[str, str, dict[str, str], ed25519.Ed25519PrivateKey]] = [
        ("as issued", target, {"tenant": TENANT, "request_digest": digest}, key),
        ("another tenant expected", target, {"tenant": "other"}, key),
        ("another request digest expected", target, {"request_digest": "00" * 32}, key),
        ("another response digest expected", target, {"response_digest": "00" * 32}, key),
        ("verified under another log key", target, {}, other),
        (
            "a proof hash flipped",
            _edit_v2(
                target, 2, lambda p: _reposition(p, proof=[flipped, *json.loads(p)["proof"][1:]])
            ),
            {},
            key,
        ),
        (
            "batch index moved",
            _edit_v2(target, 2, lambda p: _reposition(p, batch_index=3)),
            {},
            key,
        ),
        (
            "batch index outside the batch",
            _edit_v2(target, 2, lambda p: _reposition(p, batch_index=5)),
            {},
            key,
        ),
        ("position not canonical", _edit_v2(target, 2, lambda p: p.replace(",", ", ")), {}, key),
        (
            "position with an extra key",
            _edit_v2(target, 2, lambda p: _reposition(p, extra=1)),
            {},
            key,
        ),
        (
            "receipt line of another batch member",
            _edit_v2(target, 1, lambda _: texts[1].split("\n")[1]),
            {},
            key,
        ),
        (
            "receipt line not canonical",
            _edit_v2(target, 1, lambda s: s.replace(",", ", ")),
            {},
            key,
        ),
        (
            "note re-signed for another log",
            _edit_v2(
                target,
                4,
                lambda _: sign_note(batch_text.replace(log, f"{LOG_NAME}/x"), LOG_NAME, key),
            ),
            {},
            key,
        ),
        (
            "note re-signed with count 6 (the same path fits)",
            _edit_v2(
                target, 4, lambda _: sign_note(batch_text.replace("\n5\n", "\n6\n"), LOG_NAME, key)
            ),
            {},
            key,
        ),
        (
            "note signed by another key",
            _edit_v2(target, 4, lambda _: sign_note(batch_text, LOG_NAME, other)),
            {},
            key,
        ),
        ("blank line missing", target.replace("\n\n", "\n", 1), {}, key),
    ]
    out: list[dict[str, Any]] = []
    for name, text, expected, by in cases:
        check = Verifier.from_public_key(LOG_NAME, by.public_key().public_bytes_raw())
        out.append(
            {
                "name": name,
                "receipt": text,
                "log_public": by.public_key().public_bytes_raw().hex(),
                "expected": expected,
                "expect": _receipt_verdict(text, check, **expected),
            }
        )
    assert out[0]["expect"]["ok"] and verifier.vkey
    return {
        "description": (
            "docs/PROTOCOL.md section 5, receipts v2 (1.2): one batch of five receipts signed by "
            "the suite-1 audit log key (log name veil-enclave), and tampered copies of receipt 2, "
            "each with the verdict of veil.sdk.audit.verify_receipt (under `log_public`, with the "
            "`expected` tenant/digests)"
        ),
        "log_name": LOG_NAME,
        "log_public": public.hex(),
        "batch": texts,
        "cases": out,
    }


# -- replicas (protocol 1.3): a certificate naming a replica's log key -------------------------

REPLICA_NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
REPLICA_ORIGIN = "veil-replica-r1"


def _replica_claims(log_public: bytes, measurement: bytes) -> bytes:
    ephemeral = derive_x25519(fixed("replica-ephemeral-ikm", 32)).public_key().public_bytes_raw()
    return attestation_pb2.EnclaveClaims(
        protocol_version=1,
        key_id="release-r1",
        keys=[attestation_pb2.SuiteKey(suite=1, public_key=ephemeral)],
        issued_at_ms=to_ms(REPLICA_NOW - timedelta(minutes=2)),
        expires_at_ms=to_ms(REPLICA_NOW + timedelta(hours=1)),
        measurement_hex=measurement.hex(),
        audit_log_key=log_public,
        audit_log_origin=REPLICA_ORIGIN,
    ).SerializeToString()


def _replica_evidence(
    previous: dict[str, Any] | None, claims: bytes, challenge: bytes, measurement: bytes
) -> tuple[str, attestation_pb2.AttestationEvidence]:
    """The simulated TEE's evidence for the replica (its RSA/ECDSA keys are random): the
    committed sample while it still verifies, else a fresh one."""
    report_data = report_data_for(challenge, claims_digest(claims))
    if previous is not None:
        root = previous["trust_root_pem"]
        evidence = attestation_pb2.AttestationEvidence.FromString(
            bytes.fromhex(previous["replica_evidence"])
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                verify_enclave(
                    Evidence.from_proto(evidence),
                    nonce=challenge,
                    policy=AttestationPolicy.simulated_for_tests(root.encode()),
                    now=REPLICA_NOW,
                    require_unexpired=False,
                )
            if evidence.claims == claims:
                return root, evidence
        except AttestationError:
            pass
    with tempfile.TemporaryDirectory() as tmp:
        tee = SimulatedSnp.load_or_create(Path(tmp), now=REPLICA_NOW - timedelta(days=1))
        raw = tee.evidence(report_data, measurement)
        root_pem = tee.root_pem.decode()
    evidence = attestation_pb2.AttestationEvidence(
        tee=raw.tee, report=raw.report, cert_chain=list(raw.cert_chain), claims=claims
    )
    return root_pem, evidence


def _certificate(
    coordinator: ed25519.Ed25519PrivateKey,
    statement: bytes,
    evidence: attestation_pb2.AttestationEvidence,
) -> bytes:
    return scaleout_pb2.ReplicaCertificate(
        statement=statement,
        signature=coordinator.sign(CERTIFICATE_CONTEXT + statement),
        evidence=evidence,
    ).SerializeToString(deterministic=True)


def _certificate_verdict(
    raw: bytes, coordinator: bytes, manifest_sha256: bytes, root: str, measurements: list[str]
) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            identity = verify_replica_certificate(
                raw,
                coordinator_key=coordinator,
                manifest_sha256=manifest_sha256,
                policy=AttestationPolicy.simulated_for_tests(
                    root.encode(), measurements=measurements
                ),
                now=REPLICA_NOW,
            )
    except VeilError as exc:
        return _error(exc)
    return {
        "ok": True,
        "replica": identity.replica,
        "tee": identity.tee,
        "measurement": identity.measurement,
        "log_origin": identity.log_origin,
        "log_key": identity.log_key.hex(),
        "log_vkey": identity.log_verifier.vkey,
        "issued_at_ms": to_ms(identity.issued_at),
    }


def _deterministic_sample(evidence: attestation_pb2.AttestationEvidence) -> str:
    """Evidence with GPUs and a collateral map, serialized deterministically (as a coordinator
    names evidence in ``evidence_sha256``): map entries sorted by key bytes."""
    sample = attestation_pb2.AttestationEvidence()
    sample.CopyFrom(evidence)
    sample.gpus.add(spdm=b"spdm", cert_chain_pem=b"")
    sample.gpus.add(spdm=b"", cert_chain_pem=b"pem")
    for key, value in [("9", b"x"), ("10", b"y"), ("b", b""), ("a", b"z"), ("\u00e9", b"e")]:
        sample.collateral[key] = value
    return sample.SerializeToString(deterministic=True).hex()


def _manifest_verdict(raw: bytes, signature: bytes, owner: bytes) -> dict[str, Any]:
    try:
        manifest = verify_manifest(
            raw, signature, ed25519.Ed25519PublicKey.from_public_bytes(owner)
        )
    except VeilError as exc:
        return _error(exc)
    return {
        "ok": True,
        "deployment": manifest.deployment,
        "epoch_seconds": manifest.epoch_seconds,
        "sha256": manifest.sha256.hex(),
    }


def _manifest_cases(manifest: bytes) -> list[dict[str, Any]]:
    owner = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("deployment-owner", 32))
    stranger = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("stranger-owner", 32))
    doc = json.loads(manifest)

    def variant(**changes: Any) -> bytes:
        return json.dumps({**doc, **changes}, sort_keys=True, separators=(",", ":")).encode()

    without_epoch = {k: v for k, v in doc.items() if k != "epoch_seconds"}
    cases: list[tuple[str, bytes, ed25519.Ed25519PrivateKey, bool]] = [
        ("as signed", manifest, owner, False),
        ("signature flipped", manifest, owner, True),
        ("signed by a stranger", manifest, stranger, False),
        ("not canonical", json.dumps(doc, sort_keys=True).encode(), owner, False),
        ("not JSON", b"{", owner, False),
        ("an extra key", variant(extra=1), owner, False),
        ("a key missing", json.dumps(without_epoch, separators=(",", ":")).encode(), owner, False),
        ("version 2", variant(version=2), owner, False),
        ("deployment name with a slash", variant(deployment="a/b"), owner, False),
        ("empty deployment name", variant(deployment=""), owner, False),
        ("policy not text", variant(policy=1), owner, False),
        ("epoch under 10 s", variant(epoch_seconds=5), owner, False),
        ("epoch not an integer", variant(epoch_seconds="600"), owner, False),
    ]
    out: list[dict[str, Any]] = []
    for name, raw, key, flip in cases:
        signature = key.sign(MANIFEST_CONTEXT + raw)
        if flip:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        owner_public = owner.public_key().public_bytes_raw()
        out.append(
            {
                "name": name,
                "manifest": raw.decode(),
                "signature": signature.hex(),
                "owner_public": owner_public.hex(),
                "expect": _manifest_verdict(raw, signature, owner_public),
            }
        )
    assert out[0]["expect"]["ok"], out[0]
    return out


def replicas(previous: dict[str, Any] | None) -> dict[str, Any]:
    coordinator = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("coordinator-ed25519", 32))
    coordinator_public = coordinator.public_key().public_bytes_raw()
    other_coordinator = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("rogue-coord", 32))
    replica_log = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("replica-log-ed25519", 32))
    replica_public = replica_log.public_key().public_bytes_raw()
    measurement = fixed("replica-measurement", 48)
    challenge = fixed("replica-challenge", 32)
    claims = _replica_claims(replica_public, measurement)
    root, evidence = _replica_evidence(previous, claims, challenge, measurement)
    manifest = Manifest.build(
        deployment="vector",
        policy_toml=(
            'version = 1\nallowed_tees = ["sev-snp"]\n\n[snp]\n'
            f'roots = [{{pem = """{root}"""}}]\n\n'
            f'[[release]]\nname = "vector"\nsnp_measurements = ["{measurement.hex()}"]\n'
        ),
        epoch_seconds=600,
    )
    manifest_sha256 = hashlib.sha256(manifest).digest()
    deployment_claims = _claims(
        [(1, derive_x25519(fixed("shared-epoch-ikm", 32)).public_key().public_bytes_raw())],
        coordinator_public,
    )
    shared = attestation_pb2.EnclaveClaims.FromString(deployment_claims)
    shared.manifest_sha256 = manifest_sha256
    deployment_claims = shared.SerializeToString()
    evidence_bytes = evidence.SerializeToString(deterministic=True)
    fields: dict[str, Any] = {
        "replica": "r1",
        "tee": "sev-snp",
        "measurement": measurement.hex(),
        "log_origin": REPLICA_ORIGIN,
        "log_key": replica_public,
        "manifest_sha256": manifest_sha256,
        "challenge": challenge,
        "evidence_sha256": hashlib.sha256(evidence_bytes).digest(),
        "issued_at": REPLICA_NOW - timedelta(minutes=1),
    }
    statement = certificate_statement(**fields)
    certificate = _certificate(coordinator, statement, evidence)

    def restated(**changes: Any) -> bytes:
        return _certificate(coordinator, certificate_statement(**{**fields, **changes}), evidence)

    def edited(edit: Callable[[dict[str, Any]], object], dumps: Any = None) -> bytes:
        doc = json.loads(statement)
        edit(doc)
        text = (dumps or (lambda d: json.dumps(d, sort_keys=True, separators=(",", ":"))))(doc)
        return _certificate(coordinator, text.encode(), evidence)

    flipped_report = attestation_pb2.AttestationEvidence()
    flipped_report.CopyFrom(evidence)
    flipped_report.report = (
        evidence.report[:0x90] + bytes([evidence.report[0x90] ^ 1]) + evidence.report[0x91:]
    )
    flipped_digest = hashlib.sha256(flipped_report.SerializeToString(deterministic=True)).digest()
    message = scaleout_pb2.ReplicaCertificate.FromString(certificate)
    message.signature = bytes([message.signature[0] ^ 1]) + message.signature[1:]
    other_key = ed25519.Ed25519PrivateKey.from_private_bytes(fixed("other-log-ed25519", 32))
    other_measurement = fixed("other-measurement", 48).hex()
    m = measurement.hex()
    cases: list[tuple[str, bytes, bytes, bytes, list[str]]] = [
        ("as issued", certificate, coordinator_public, manifest_sha256, [m]),
        ("any measurement allowed", certificate, coordinator_public, manifest_sha256, []),
        (
            "policy pins another measurement",
            certificate,
            coordinator_public,
            manifest_sha256,
            [other_measurement],
        ),
        (
            "signature flipped",
            message.SerializeToString(deterministic=True),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "another coordinator key",
            certificate,
            other_coordinator.public_key().public_bytes_raw(),
            manifest_sha256,
            [m],
        ),
        (
            "not a 32-byte coordinator key",
            certificate,
            coordinator_public[:31],
            manifest_sha256,
            [m],
        ),
        (
            "issued under another manifest",
            certificate,
            coordinator_public,
            hashlib.sha256(b"other").digest(),
            [m],
        ),
        (
            "evidence is not the evidence named",
            restated(evidence_sha256=hashlib.sha256(b"x").digest()),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement names another measurement",
            restated(measurement=other_measurement),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement names another TEE",
            restated(tee="tdx"),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement names another log key",
            restated(log_key=other_key.public_key().public_bytes_raw()),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement names another log origin",
            restated(log_origin="veil-replica-r2"),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement names another challenge",
            restated(challenge=fixed("other-challenge", 32)),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "report flipped (digest restated)",
            _certificate(
                coordinator,
                certificate_statement(**{**fields, "evidence_sha256": flipped_digest}),
                flipped_report,
            ),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement not canonical",
            edited(lambda d: None, lambda d: json.dumps(d, sort_keys=True)),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement with an extra key",
            edited(lambda d: d.update(extra=1)),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement without a key",
            edited(lambda d: d.pop("replica")),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement version 2",
            edited(lambda d: d.update(version=2)),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement log key not base64",
            edited(lambda d: d.update(log_key="!!")),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement challenge not hex",
            edited(lambda d: d.update(challenge="zz")),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        (
            "statement not JSON",
            _certificate(coordinator, b"{", evidence),
            coordinator_public,
            manifest_sha256,
            [m],
        ),
        ("not a ReplicaCertificate", b"\xff\xff\xff", coordinator_public, manifest_sha256, [m]),
    ]
    out: list[dict[str, Any]] = [
        {
            "name": name,
            "certificate": raw.hex(),
            "coordinator_key": key.hex(),
            "manifest_sha256": digest.hex(),
            "measurements": pins,
            "expect": _certificate_verdict(raw, key, digest, root, pins),
        }
        for name, raw, key, digest, pins in cases
    ]
    assert out[0]["expect"]["ok"], out[0]
    texts = _v2_batch(replica_log, REPLICA_ORIGIN, f"{REPLICA_ORIGIN}/{TENANT}", 3)
    replica_verifier = Verifier.from_public_key(REPLICA_ORIGIN, replica_public)
    coordinator_verifier = Verifier.from_public_key(LOG_NAME, coordinator_public)
    receipt_line = json.loads(texts[1].split("\n")[1])
    return {
        "description": (
            "docs/PROTOCOL.md 'Replicas (1.3)': a coordinator's ReplicaCertificate for replica r1 "
            "(its evidence from the simulated TEE, trusted via `trust_root_pem`, verified at "
            "`now`), the deployment's shared claims, and a v2 receipt under the certified replica "
            "log key; each case has the verdict of veil.sdk.replicas.verify_replica_certificate "
            "under a policy pinning `trust_root_pem` and `measurements`"
        ),
        "now": REPLICA_NOW.isoformat(),
        "now_ms": to_ms(REPLICA_NOW),
        "trust_root_pem": root,
        "coordinator_seed": fixed("coordinator-ed25519", 32).hex(),
        "coordinator_public": coordinator_public.hex(),
        "manifest": manifest.decode(),
        "manifest_sha256": manifest_sha256.hex(),
        "manifest_cases": _manifest_cases(manifest),
        "deployment_claims": deployment_claims.hex(),
        "replica_log_seed": fixed("replica-log-ed25519", 32).hex(),
        "replica_log_public": replica_public.hex(),
        "replica_claims": claims.hex(),
        "challenge": challenge.hex(),
        "replica_evidence": evidence_bytes.hex(),
        "deterministic_sample": _deterministic_sample(evidence),
        "statement": statement.decode(),
        "certificate": certificate.hex(),
        "receipt": {
            "text": texts[1],
            "tenant": TENANT,
            "request_digest": receipt_line["request_digest"],
            "response_digest": receipt_line["response_digest"],
            "under_replica_key": _receipt_verdict(
                texts[1],
                replica_verifier,
                tenant=TENANT,
                request_digest=receipt_line["request_digest"],
                response_digest=receipt_line["response_digest"],
            ),
            "under_coordinator_key": _receipt_verdict(texts[1], coordinator_verifier),
        },
        "cases": out,
    }


# -- writing and checking ----------------------------------------------------------------------


def _dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=False, ensure_ascii=False) + "\n"


def build_all(previous: Callable[[str], dict[str, Any] | None]) -> dict[str, str]:
    """File name -> content. ``previous(name)`` is the committed document, if any."""
    return {
        "suite1.json": _dump(suite1()),
        "suite2.json": _dump(suite2(previous("suite2.json"))),
        "snp_verdicts.json": _dump(snp_verdicts()),
        "receipts_v2.json": _dump(receipts_v2()),
        "replicas.json": _dump(replicas(previous("replicas.json"))),
        "sessions.json": _dump(sessions()),
    }


def committed(name: str) -> dict[str, Any] | None:
    path = OUT_DIR / name
    if not path.is_file():
        return None
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the files would change")
    args = parser.parse_args(argv)
    files = build_all(committed)
    drifted = [
        n
        for n, text in files.items()
        if not (OUT_DIR / n).is_file() or (OUT_DIR / n).read_text() != text
    ]
    if args.check:
        for name in drifted:
            print(f"{name} differs from the generator's output", file=sys.stderr)
        return 1 if drifted else 0
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (OUT_DIR / name).write_text(text)
    print(f"wrote {len(files)} files to {OUT_DIR.relative_to(ROOT)} ({len(drifted)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
