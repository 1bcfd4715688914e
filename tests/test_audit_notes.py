"""C2SP signed notes and tlog checkpoints: the vectors (incl. sum.golang.org), and ours."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from veil.enclave.audit import Signer
from veil.sdk.audit import (
    Checkpoint,
    MerkleTree,
    SignedNote,
    Verifier,
    hash_leaf,
    key_hash,
    verify_checkpoint,
    verify_checkpoint_consistency,
)
from veil.sdk.errors import AuditLogError


def _cases(vectors: Path) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = json.loads(
        vectors.joinpath("merkle", "signed_notes.json").read_text()
    )
    assert len(cases) >= 7
    return cases


def test_signed_note_vectors(vectors: Path) -> None:
    results = {}
    for case in _cases(vectors):
        verifiers = [Verifier.from_vkey(v) for v in case["vkeys"]]
        try:
            if case.get("checkpoint"):
                verify_checkpoint(case["note"], verifiers)
            verified = SignedNote.from_text(case["note"]).verify(verifiers)
        except AuditLogError:
            results[case["name"]] = "reject"
        else:
            results[case["name"]] = ",".join(verified.verified_by)
    assert results == {
        "c2sp-signed-note-example": "example.com/foo",
        "golang-mod-note-PeterNeumann": "PeterNeumann",
        "golang-mod-note-two-sigs": "PeterNeumann,EnochRoot",
        "golang-mod-note-only-peter-known": "PeterNeumann",
        "golang-mod-note-tampered": "reject",
        "sum.golang.org-checkpoint-49189689": "sum.golang.org",
        "c2sp-tlog-checkpoint-example": "reject",
    }


def test_sum_golang_org_checkpoint_fields(vectors: Path) -> None:
    case = next(c for c in _cases(vectors) if c["name"].startswith("sum.golang.org"))
    checkpoint = verify_checkpoint(case["note"], Verifier.from_vkey(case["vkeys"][0]))
    assert checkpoint.origin == "go.sum database tree"
    assert checkpoint.size == 49189689
    assert base64.b64encode(checkpoint.root_hash).decode() == (
        "ftjbAOzaupaIvaPo/G+Dk63nxOZ2s1OPOKIaPtXs7S4="
    )
    with pytest.raises(AuditLogError, match="expected"):
        verify_checkpoint(
            case["note"], Verifier.from_vkey(case["vkeys"][0]), origin="sum.golang.org"
        )
    edited = case["note"].replace("49189689", "49189690")
    with pytest.raises(AuditLogError, match="does not verify"):
        verify_checkpoint(edited, Verifier.from_vkey(case["vkeys"][0]))


def test_vkey_round_trip_and_hash(vectors: Path) -> None:
    for case in _cases(vectors):
        for vkey in case["vkeys"]:
            verifier = Verifier.from_vkey(vkey)
            assert verifier.vkey == vkey
            assert verifier.key_hash == key_hash(verifier.name, verifier.public_key)


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+c74f20a3",  # missing key
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong hash
        "Peter+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # name not hashed
        "PeterNeumann+c74f20a3+AhpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWA",  # alg 0x02
        "PeterNeumann+c74f20a3+!!!!",  # not base64
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # space in name
    ],
)
def test_malformed_vkeys_are_rejected(vkey: str) -> None:
    with pytest.raises(AuditLogError):
        Verifier.from_vkey(vkey)


@pytest.mark.parametrize(
    "note",
    [
        "no blank line\n\u2014 a AAAAAAAA\n",
        "text\n\n\u2014 a AAAAAAAAAA==",  # no final newline
        "text\n\n- a AAAAAAAAAA==\n",  # hyphen, not em dash
        "text\n\n\u2014 a b c\n",
        "text\n\n\u2014 a AAA=\n",  # too short
        "te\x01xt\n\n\u2014 a AAAAAAAAAA==\n",  # control character
    ],
)
def test_malformed_notes_are_rejected(note: str) -> None:
    with pytest.raises(AuditLogError):
        SignedNote.from_text(note)


@pytest.mark.parametrize(
    "body",
    [
        "origin\n10\n",  # no root line
        "origin\n010\nAAAA\n",  # leading zero
        "origin\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n1\n" + base64.b64encode(bytes(31)).decode() + "\n",
        "origin\n1\n" + base64.b64encode(bytes(32)).decode(),  # no final newline
        "origin\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n",  # empty extension
    ],
)
def test_malformed_checkpoint_bodies_are_rejected(body: str) -> None:
    with pytest.raises(AuditLogError):
        Checkpoint.from_text(body)


def test_our_signer_round_trips_and_binds_origin() -> None:
    signer = Signer.generate("veil.test/log")
    tree = MerkleTree(hash_leaf(bytes([i])) for i in range(5))
    body = Checkpoint("veil.test/log/acme", 5, tree.root(), ("ext one",)).to_text()
    note = signer.sign_note(body)
    verifier = Verifier.from_vkey(signer.vkey)
    checkpoint = verify_checkpoint(note, verifier, origin="veil.test/log/acme")
    assert checkpoint == Checkpoint.from_text(body)
    assert checkpoint.extensions == ("ext one",)
    other = Signer.generate("veil.test/log")  # same name, different key: a re-signing attacker
    with pytest.raises(AuditLogError, match="no signature by a known key"):
        verify_checkpoint(other.sign_note(body), signer.verifier)
    old = checkpoint
    tree.append_data(b"more")
    new = Checkpoint("veil.test/log/acme", 6, tree.root())
    verify_checkpoint_consistency(old, new, tree.consistency_proof(5, 6))
    with pytest.raises(AuditLogError):
        verify_checkpoint_consistency(
            old, Checkpoint("veil.test/log/other", 6, tree.root()), tree.consistency_proof(5, 6)
        )


def test_duplicate_signature_by_same_key_is_rejected() -> None:
    signer = Signer.generate("dup")
    note = signer.sign_note("hello\n")
    sig_line = note.split("\n\n", 1)[1]
    with pytest.raises(AuditLogError, match="two signatures"):
        SignedNote.from_text(note + sig_line).verify(signer.verifier)
