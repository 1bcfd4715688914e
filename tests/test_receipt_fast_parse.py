"""The client's fast receipt checks accept and refuse exactly what the generic algorithm did.

``Receipt.json_line`` and the v2 batch position are formatted directly for the values the
enclave writes (ASCII strings, safe integers) instead of through ``canonical_json``, and a
verified batch note is cached. The reference below is the algorithm as it was (``json.loads``,
type checks, then ``canonical_json`` re-encoding compared with the text), kept here verbatim.
Every receipt of a corpus — real ones from ``batch_receipts`` under the enclave's ``Signer``,
and hundreds of non-canonical or hostile variants of them, each signed properly so that only
the parse and canonical-form checks can refuse it — must get the same verdict from both: the
same receipt, or the same error class, reason and message.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from veil.enclave.audit import Signer
from veil.sdk.audit import MerkleTree, Receipt, SignedNote, Verifier, hash_leaf, verify_receipt
from veil.sdk.audit import _receipt as receipt_module
from veil.sdk.audit._merkle import verify_inclusion
from veil.sdk.audit._note import _b64decode, _check_name
from veil.sdk.audit.records import canonical_json
from veil.sdk.errors import AuditFailure, AuditLogError

LOG = "veil-enclave"
SIGNER = Signer.generate(LOG)
KEY = SIGNER.verifier
OTHER = Signer.generate(LOG)  # same name, another key
V1, V2, BATCH = "veil-audit-receipt/v1", "veil-audit-receipt/v2", "veil-audit-receipt-batch/v2"
FIELDS = frozenset(
    {
        "log",
        "tenant",
        "leaf_index",
        "leaf_hash",
        "time",
        "request_digest",
        "response_digest",
        "model_digest",
    }
)

# -- the reference: the algorithm before the fast paths, verbatim -------------------------


def ref_json_line(r: Receipt) -> str:
    payload = {
        "log": r.log,
        "tenant": r.tenant,
        "leaf_index": r.leaf_index,
        "leaf_hash": base64.b64encode(r.leaf_hash).decode(),
        "time": r.time,
        "request_digest": r.request_digest,
        "response_digest": r.response_digest,
        "model_digest": r.model_digest,
    }
    return canonical_json(payload).decode()


def ref_from_json_line(line: str) -> Receipt:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise AuditLogError("receipt payload is not valid JSON") from exc
    if not isinstance(obj, dict) or set(obj) != FIELDS:
        raise AuditLogError("receipt payload does not have exactly the expected fields")
    if not isinstance(obj["leaf_hash"], str):
        raise AuditLogError("receipt leaf hash must be base64 text")
    try:
        receipt = Receipt(
            log=obj["log"],
            tenant=obj["tenant"],
            leaf_index=obj["leaf_index"],
            leaf_hash=_b64decode(obj["leaf_hash"], "receipt leaf hash"),
            time=obj["time"],
            request_digest=obj["request_digest"],
            response_digest=obj["response_digest"],
            model_digest=obj["model_digest"],
        )
    except TypeError as exc:
        raise AuditLogError(f"receipt field has the wrong type: {exc}") from exc
    if ref_json_line(receipt) != line:
        raise AuditLogError("receipt payload is not in canonical form")
    return receipt


def ref_from_body(text: str) -> Receipt:
    header, sep, rest = text.partition("\n")
    if header != V1 or not sep or not rest.endswith("\n") or "\n" in rest[:-1]:
        raise AuditLogError(f"receipt text is not '{V1}' plus one JSON line")
    return ref_from_json_line(rest[:-1])


def ref_open_v2(text: str, log_key: Verifier) -> Receipt:
    parts = text.split("\n", 4)
    if len(parts) != 5 or parts[0] != V2 or parts[3] != "":
        raise AuditLogError(f"receipt is not '{V2}', a JSON line, a proof, a note")
    line, position, note = parts[1], parts[2], parts[4]
    receipt = ref_from_json_line(line)
    batch = SignedNote.from_text(note).verify(log_key).text
    rows = batch.split("\n")
    if len(rows) != 5 or rows[0] != BATCH or rows[4] != "":
        raise AuditLogError("receipt batch note is malformed")
    if rows[1] != receipt.log:
        raise AuditLogError("receipt batch note is for another log", reason=AuditFailure.MISMATCH)
    if not rows[2].isascii() or not rows[2].isdigit() or rows[2] != str(int(rows[2])):
        raise AuditLogError("receipt batch size is not a decimal integer")
    count = int(rows[2])
    root = _b64decode(rows[3], "receipt batch root")
    try:
        obj = json.loads(position)
    except ValueError as exc:
        raise AuditLogError("receipt batch position is not valid JSON") from exc
    if not isinstance(obj, dict) or set(obj) != {"batch_index", "proof"}:
        raise AuditLogError("receipt batch position must have batch_index and proof")
    index, proof = obj["batch_index"], obj["proof"]
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
        raise AuditLogError("receipt batch index is outside the batch")
    if not isinstance(proof, list) or not all(isinstance(h, str) for h in proof):
        raise AuditLogError("receipt batch proof must be a list of base64 hashes")
    if canonical_json(obj).decode() != position:
        raise AuditLogError("receipt batch position is not in canonical form")
    hashes = [_b64decode(h, "receipt batch proof") for h in proof]
    verify_inclusion(hash_leaf(line.encode()), index, count, hashes, root)
    return receipt


def ref_verify_receipt(note: str | bytes, log_key: Verifier, **expected: str | None) -> Receipt:
    try:
        text = note.decode() if isinstance(note, bytes) else note
    except UnicodeDecodeError as exc:
        raise AuditLogError("receipt is not UTF-8") from exc
    if text.startswith(V2 + "\n"):
        receipt = ref_open_v2(text, log_key)
    else:
        receipt = ref_from_body(SignedNote.from_text(text).verify(log_key).text)
    if not receipt.log.startswith(log_key.name + "/"):
        raise AuditLogError(
            f"receipt names log {receipt.log!r}, not a log of {log_key.name!r}",
            reason=AuditFailure.MISMATCH,
        )
    for name, want in expected.items():
        if want is not None and getattr(receipt, name) != want:
            raise AuditLogError(
                f"receipt {name} does not match this exchange", reason=AuditFailure.MISMATCH
            )
    return receipt


def ref_batch_receipts(receipts: list[Receipt], sign: Callable[[str], str]) -> list[str]:
    lines = [ref_json_line(r) for r in receipts]
    tree = MerkleTree()
    for line in lines:
        tree.append_hash(hash_leaf(line.encode()))
    root = base64.b64encode(tree.root()).decode()
    note = sign(f"{BATCH}\n{receipts[0].log}\n{len(lines)}\n{root}\n")
    out = []
    for index, line in enumerate(lines):
        proof = [base64.b64encode(h).decode() for h in tree.inclusion_proof(index)]
        position = canonical_json({"batch_index": index, "proof": proof}).decode()
        out.append(f"{V2}\n{line}\n{position}\n\n{note}")
    return out


def ref_check_name(name: str) -> bool:
    return not (not name or any(c.isspace() for c in name) or "+" in name)


# -- verdicts -----------------------------------------------------------------------------


def verdict(fn: Callable[[], Any]) -> tuple[Any, ...]:
    """What a call did: its result, or its error's class, reason and message."""
    try:
        result = fn()
    except AuditLogError as exc:
        return ("refused", exc.reason, str(exc))
    except Exception as exc:  # compared, never swallowed: both must agree
        return ("raised", type(exc).__name__, str(exc))
    if dataclasses.is_dataclass(result):
        return ("ok", dataclasses.astuple(result))  # type: ignore[arg-type]
    return ("ok", result)


# -- the corpus ---------------------------------------------------------------------------


def base_receipts() -> list[Receipt]:
    """Receipts as the enclave writes them, and some it never would but a parser must handle."""
    base = Receipt(
        log=f"{LOG}/default",
        tenant="default",
        leaf_index=0,
        leaf_hash=bytes(range(0, 64, 2)),
        time="2026-01-02T03:04:05.123456Z",
        request_digest="a" * 64,
        response_digest="b" * 64,
    )
    r = dataclasses.replace
    return [
        base,
        r(base, leaf_index=1, leaf_hash=b"\xff\xfe" * 16),
        r(base, leaf_index=7, leaf_hash=b"\x3e\x3f" * 16),
        r(base, leaf_index=2**53 - 1, model_digest="sha256:" + "c" * 64),
        r(base, leaf_index=3, log=f"{LOG}/caf\u00e9", request_digest="r\u00e9"),
        r(base, leaf_index=4, response_digest='q"\\\t\n\x00\x1f\x7f/'),
        r(base, leaf_index=5, model_digest="\U0001f600\u2028\u0085"),
        r(base, leaf_index=6, time="2026-01-02T03:04:05Z"),
    ]


def line_variants(line: str, rng: random.Random) -> Iterator[str]:
    """Non-canonical, hostile and still-canonical spellings of one receipt line."""
    obj = json.loads(line)
    yield line
    yield json.dumps(obj, sort_keys=True)  # default separators: whitespace
    yield json.dumps(obj, separators=(",", ":"))  # insertion order
    yield json.dumps(dict(reversed(list(obj.items()))), separators=(",", ":"))
    yield json.dumps(obj, sort_keys=True, separators=(",", ":"))  # ensure_ascii: escapes
    yield " " + line
    yield line + " "
    yield line.replace(":", ": ", 1)
    yield line.replace(",", " ,", 1)
    yield "\ufeff" + line
    yield line[:-1]
    yield line + "}"
    yield "[" + line + "]"
    yield from ("", "{", "null", "[]", '"x"', "1", "{}", "NaN", '{"a":1}')
    for name in sorted(obj):  # drop, duplicate, retype each field
        value = obj[name]
        rest = {k: v for k, v in obj.items() if k != name}
        yield canonical_json(rest).decode()
        dup = json.dumps(value, ensure_ascii=False)
        yield line[:-1] + f',"{name}":{dup}}}'
        yield "{" + f'"{name}":{dup},' + line[1:]
        for other in (None, True, False, 0, 1, -1, 1.0, 1.5, "", "x", [], {}, [value], 2**53):
            yield canonical_json_unchecked({**obj, name: other})
    for extra in ('"v":1', '"LOG":"x"', '"log ":"x"', '"":0'):
        yield line[:-1] + "," + extra + "}"
    for number in (
        "1.0", "1e3", "1E3", "-0", "01", "0x1", "+1", "NaN", "Infinity", "-Infinity",
        "true", "false", "null", '"1"', str(2**53), str(2**53 - 1), str(2**64), "9" * 400,
        "9" * 5000, "-1", "1" + "0" * 20, "\u0661",
    ):  # fmt: skip
        yield _set_raw(line, "leaf_index", number)
    b64 = obj["leaf_hash"]
    raw = base64.b64decode(b64)
    for spelled in (
        b64.rstrip("="), b64 + "=", b64[:-2] + "A=", b64.replace("/", "\\/"),
        b64.replace("+", "-").replace("/", "_"), " " + b64, b64 + "\n", b64[:-1] + "\u00e9",
        base64.b64encode(raw[:-1]).decode(), base64.b64encode(raw + b"\0").decode(),
        base64.b64encode(raw).decode().lower(), "\\u0041" + b64[1:], "",
        b64[:-2] + chr(ord(b64[-2]) ^ 1) + "=",
    ):  # fmt: skip
        yield _set_raw(line, "leaf_hash", json.dumps(spelled))
    for name in ("log", "tenant", "time", "request_digest", "response_digest", "model_digest"):
        value = obj[name] if isinstance(obj[name], str) else "m"
        for spelled in (
            json.dumps(value),  # \u escapes for non-ASCII
            json.dumps(value, ensure_ascii=False).replace("a", "\\u0061"),
            json.dumps(value, ensure_ascii=False).replace("/", "\\/"),
            json.dumps(value + "\t", ensure_ascii=False).replace("\\t", "\\u0009"),
            json.dumps(value + "\u007f", ensure_ascii=False),
            json.dumps(value, ensure_ascii=False)[:-1] + '\\u007f"',
            json.dumps(value + "\x1f", ensure_ascii=False),
            json.dumps(value, ensure_ascii=False)[:-1] + '\\u001F"',
            json.dumps(value, ensure_ascii=False)[:-1] + '\\ud800"',
            json.dumps(value, ensure_ascii=False)[:-1] + '\\udc00"',
            json.dumps(value, ensure_ascii=False)[:-1] + '\\ud83d\\ude00"',
            json.dumps(value + "😀", ensure_ascii=False),
            json.dumps(value + "\u2028\u00a0", ensure_ascii=False),
            json.dumps(value + '"\\', ensure_ascii=False),
            json.dumps(value, ensure_ascii=False)[:-1] + '\t"',  # raw control: invalid JSON
            json.dumps("\uff12\uff10\uff12\uff16-01-02T03:04:05Z", ensure_ascii=False),  # fullwidth
            json.dumps("2026-13-02T03:04:05.000000Z"),
            json.dumps("2026-01-02T03:04:05.000000+00:00"),
            json.dumps(""),
            json.dumps("Default"),
            json.dumps("a" * 65),
            json.dumps("de fault"),
        ):
            yield _set_raw(line, name, spelled)
    for _ in range(150):  # random edits with JSON's own characters
        chars = list(line)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(chars) + 1)
            op = rng.random()
            piece = rng.choice(list(' \t{}[]":,\\/0123456789.eE+-truefalsnul\u00e9\x7f'))
            if op < 0.4 and at < len(chars):
                chars[at] = piece
            elif op < 0.7:
                chars.insert(at, piece)
            elif at < len(chars):
                del chars[at]
        yield "".join(chars)


def canonical_json_unchecked(obj: dict[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _set_raw(line: str, name: str, raw_value: str) -> str:
    """``line`` with field ``name``'s JSON value text replaced by ``raw_value``, in place."""
    obj = json.loads(line)
    marker = "\x00MARK\x00"
    text = canonical_json_unchecked({**obj, name: marker})
    return text.replace(json.dumps(marker, ensure_ascii=False), raw_value)


def position_variants(index: int, proof: list[str], rng: random.Random) -> Iterator[str]:
    """Spellings of a batch position line (``proof`` is the true one for ``index``)."""
    obj: dict[str, Any] = {"batch_index": index, "proof": proof}
    canonical = canonical_json(obj).decode()
    yield canonical
    yield json.dumps(obj)
    yield json.dumps({"proof": proof, "batch_index": index}, separators=(",", ":"))
    yield canonical.replace("/", "\\/")
    yield canonical.replace("A", "\\u0041")
    yield " " + canonical
    yield canonical[:-1] + ',"batch_index":' + str(index) + "}"
    yield canonical[:-1] + ',"x":1}'
    yield canonical_json_unchecked({"batch_index": index})
    for raw in (
        f"{index}.0", f"{index}e0", "true", "false", "-1", "null", f'"{index}"', str(2**53),
        str(2**60), "-" + str(2**60), "9" * 30, f"0{index}", "\u0661",
    ):  # fmt: skip
        yield canonical.replace(f'"batch_index":{index}', f'"batch_index":{raw}')
    for bad in (
        [],
        [1],
        [None],
        ["\u00e9"],
        ["\\ud800"],
        ["x"],
        [*proof, proof[0] if proof else "A"],
    ):
        yield canonical_json_unchecked({"batch_index": index, "proof": bad}).replace("\\\\", "\\")
    yield canonical_json_unchecked({"batch_index": index, "proof": "AAAA"})
    yield canonical_json_unchecked({"batch_index": index, "proof": {"a": "b"}})
    if proof:
        yield canonical.replace(proof[0], proof[0].rstrip("="))
        yield canonical.replace(proof[0], proof[0][:-2] + "B=")
        yield canonical.replace(proof[0], "\\u00e9" + proof[0][1:])
        yield canonical.replace(proof[0], proof[0][:-1] + "\\ud800")
    for _ in range(40):
        chars = list(canonical)
        at = rng.randrange(len(chars))
        chars[at] = rng.choice(list(' {}[]":,\\0123456789.e-tfn\u00e9'))
        yield "".join(chars)


def v2_batch(
    lines: list[str],
    *,
    signer: Signer = SIGNER,
    log: str = f"{LOG}/default",
    count: str | None = None,
    root_b64: str | None = None,
    header: str = BATCH,
) -> tuple[str, list[list[str]]]:
    """A batch note signed over ``lines`` (as given, canonical or not) and each one's proof."""
    tree = MerkleTree()
    for line in lines:
        tree.append_hash(hash_leaf(line.encode()))
    root = root_b64 if root_b64 is not None else base64.b64encode(tree.root()).decode()
    note = signer.sign_note(f"{header}\n{log}\n{count or len(lines)}\n{root}\n")
    proofs = [
        [base64.b64encode(h).decode() for h in tree.inclusion_proof(i)] for i in range(len(lines))
    ]
    return note, proofs


def v2_text(line: str, position: str, note: str) -> str:
    return f"{V2}\n{line}\n{position}\n\n{note}"


def corpus() -> Iterator[str | bytes]:
    rng = random.Random(12)
    receipts = base_receipts()
    default = [r for r in receipts if r.log == f"{LOG}/default"]
    real = receipt_module.batch_receipts(default, SIGNER.sign_note)  # the enclave's function
    yield from real
    yield from receipt_module.batch_receipts(
        [r for r in receipts if r not in default], SIGNER.sign_note
    )
    for r in receipts:  # v1: each its own signed note
        yield SIGNER.sign_note(r.body())
    yield from receipt_module.batch_receipts(receipts[:1], OTHER.sign_note)
    for r in receipts[:2] + receipts[4:7]:
        line = ref_json_line(r)
        variants = list(dict.fromkeys(line_variants(line, rng)))
        for variant in variants:
            if "\n" in variant:
                continue
            # alone in a batch: only the line's own checks can refuse it
            note, proofs = v2_batch([variant], log=r.log)
            yield v2_text(
                variant, canonical_json({"batch_index": 0, "proof": proofs[0]}).decode(), note
            )
            yield SIGNER.sign_note(f"{V1}\n{variant}\n")
        # second of three in a batch, with a one- or two-hash proof
        for variant in variants[:40]:
            if "\n" in variant:
                continue
            note, proofs = v2_batch([real[0].split("\n")[1], variant, line], log=r.log)
            yield v2_text(
                variant, canonical_json({"batch_index": 1, "proof": proofs[1]}).decode(), note
            )
    # positions
    lines = [ref_json_line(r) for r in default[:5]]
    note, proofs = v2_batch(lines)
    for index in (0, 3, 4):
        for position in dict.fromkeys(position_variants(index, proofs[index], rng)):
            yield v2_text(lines[index], position, note)
    # batch notes: header, log, size, root, signatures
    for kwargs in (
        {"count": "05"}, {"count": "+5"}, {"count": "\uff15"}, {"count": "5 "}, {"count": "-5"},
        {"count": "0"}, {"count": "6"}, {"count": str(2**60)}, {"count": "9" * 40},
        {"root_b64": "AAAA"}, {"root_b64": "!"}, {"root_b64": ""}, {"log": f"{LOG}/other"},
        {"log": "someone-else/default"}, {"header": V2}, {"signer": OTHER},
    ):  # fmt: skip
        note_k, proofs_k = v2_batch(lines, **kwargs)  # type: ignore[arg-type]
        yield v2_text(
            lines[2], canonical_json({"batch_index": 2, "proof": proofs_k[2]}).decode(), note_k
        )
    big_note, _ = v2_batch(lines[:1], count=str(2**60))
    for index in (2**53 - 1, 2**53, 2**59):  # inside a (signed) huge batch: a proof can't hold
        yield v2_text(lines[0], f'{{"batch_index":{index},"proof":[]}}', big_note)
        yield v2_text(lines[0], f'{{"batch_index":{index},"proof":["\\ud800"]}}', big_note)
        yield v2_text(lines[0], f'{{"proof":["\\ud800"],"batch_index":{index}}}', big_note)
    # the envelope itself
    good = real[1]
    yield good.encode()
    yield good.encode()[:-3] + b"\xff\n"
    yield good.replace(V2, V1, 1)
    yield good.replace("\n\n", "\n", 1)
    yield good.replace("\n\n", "\n\n\n", 1)
    yield good + "\n"
    yield good[:-1]
    yield good.replace("\u2014 ", "- ")
    yield good.replace("\u2014 ", "\u2014 \u3000")
    yield good.rsplit("\n\n", 1)[0] + "\n\n" + good.rsplit("\n\n", 1)[1] * 2  # two signatures
    yield good.replace(f"\n{LOG}/default\n", f"\n{LOG}/default\x01\n")
    yield V2 + "\n"
    yield ""


EXPECTED = {"tenant": "default", "request_digest": "a" * 64, "response_digest": None}


def _check_same(texts: list[str | bytes]) -> tuple[int, int]:
    accepted = refused = 0
    for text in texts:
        for expected in ({}, EXPECTED):
            want = verdict(lambda: ref_verify_receipt(text, KEY, **expected))  # noqa: B023
            receipt_module._verified_batch.cache_clear()
            got = verdict(lambda: verify_receipt(text, KEY, **expected))  # noqa: B023
            again = verdict(lambda: verify_receipt(text, KEY, **expected))  # noqa: B023 - cached
            assert got == want, f"verdicts differ for {text!r}: {got} != {want}"
            assert again == want, f"a cached batch note changed the verdict for {text!r}"
        if want[0] == "ok":
            accepted += 1
        else:
            refused += 1
    return accepted, refused


def test_fast_receipt_checks_agree_with_the_generic_algorithm() -> None:
    texts = list(dict.fromkeys(corpus()))
    accepted, refused = _check_same(texts)
    # The corpus exercises both sides, through the direct and the generic formatting.
    assert len(texts) > 1500
    assert accepted >= 40, accepted
    assert refused >= 1000, refused


def test_real_receipts_are_accepted_and_variants_refused_for_the_right_reason() -> None:
    for receipt in base_receipts():
        (text,) = receipt_module.batch_receipts([receipt], SIGNER.sign_note)
        assert verify_receipt(text, KEY) == receipt
    texts = receipt_module.batch_receipts(base_receipts()[:2], SIGNER.sign_note)
    line = texts[0].split("\n")[1]
    spaced = json.dumps(json.loads(line), sort_keys=True)
    note, proofs = v2_batch([spaced])
    position = canonical_json({"batch_index": 0, "proof": proofs[0]}).decode()
    with pytest.raises(AuditLogError, match="not in canonical form"):
        verify_receipt(v2_text(spaced, position, note), KEY)
    note, proofs = v2_batch([line, line])
    assert verify_receipt(
        v2_text(line, f'{{"batch_index":1,"proof":["{proofs[1][0]}"]}}', note), KEY
    )
    escaped = f'{{"batch_index":1,"proof":["{proofs[1][0].replace("/", chr(92) + "/")}"]}}'
    assert "\\/" in escaped or "/" not in proofs[1][0]
    with pytest.raises(AuditLogError, match="position is not in canonical form"):
        verify_receipt(v2_text(line, f'{{"proof":["{proofs[1][0]}"],"batch_index":1}}', note), KEY)


def test_the_enclave_writes_the_same_receipts_byte_for_byte() -> None:
    """``batch_receipts`` (the enclave's) with the direct formatting: the same bytes (Ed25519
    signatures are deterministic, so the whole text compares)."""
    default = [r for r in base_receipts() if r.log == f"{LOG}/default"]
    for size in (1, 2, 3, 5, 9, 17):
        batch = [dataclasses.replace(default[i % len(default)], leaf_index=i) for i in range(size)]
        got = receipt_module.batch_receipts(batch, SIGNER.sign_note)
        assert got == ref_batch_receipts(batch, SIGNER.sign_note)
        assert [verify_receipt(text, KEY) for text in got] == batch


@pytest.mark.parametrize("receipt", base_receipts(), ids=lambda r: str(r.leaf_index))
def test_json_line_is_canonical_json(receipt: Receipt) -> None:
    assert receipt.json_line() == ref_json_line(receipt)
    assert Receipt.from_json_line(receipt.json_line()) == receipt


def test_json_line_refuses_what_canonical_json_refuses() -> None:
    odd = [
        {"request_digest": "\ud800"},  # a lone surrogate: canonical_json refuses it
        {"model_digest": "x\udfff"},
        {"log": "veil-enclave/\ud83d"},
        {"request_digest": '\x00\x1f\x7f"\\/\u2028'},
        {"leaf_index": True},
        {"leaf_index": 2**53},
    ]
    base = base_receipts()[0]
    for change in odd:
        want = verdict(lambda: ref_json_line(dataclasses.replace(base, **change)))  # noqa: B023
        got = verdict(lambda: dataclasses.replace(base, **change).json_line())  # noqa: B023
        assert got == want, change


def test_position_json_is_canonical_json() -> None:
    for index in (0, 1, 2**20, 2**53 - 1, 2**53, -(2**53), 2**80):
        for proof in ([], ["AAAA"], ["a/b+c="] * 20, ["\u00e9"], ["\ud800"], ['"\\\x01']):
            obj = {"batch_index": index, "proof": proof}
            want = verdict(lambda: canonical_json(obj).decode())  # noqa: B023
            assert verdict(lambda: receipt_module._position_json(obj)) == want  # noqa: B023


def test_note_key_names_are_checked_as_before() -> None:
    """``_check_name`` without a per-character loop: the same verdict on every code point."""

    def refused(name: str) -> bool:
        try:
            _check_name(name)
        except AuditLogError as exc:
            assert str(exc) == f"invalid key name {name!r}: must be non-empty, no spaces, no '+'"
            return True
        return False

    for cp in range(0x110000):
        c = chr(cp)
        name = f"a{c}b"
        if refused(name) == ref_check_name(name) or refused(c) == ref_check_name(c):
            raise AssertionError(f"U+{cp:04X}: the name check changed")
    assert refused("") and refused("a+b") and not refused("veil-enclave/x")


def test_a_cached_batch_note_still_binds_its_key() -> None:
    """The cache is keyed by note *and* key: a note verified once is not thereby verified under
    another key, even one with the same name and key hash."""
    (text,) = receipt_module.batch_receipts(base_receipts()[:1], SIGNER.sign_note)
    assert verify_receipt(text, KEY).leaf_index == 0  # now cached
    for other in (
        OTHER.verifier,
        Verifier(name=KEY.name, key_hash=KEY.key_hash, public_key=OTHER.verifier.public_key),
    ):
        want = verdict(lambda: ref_verify_receipt(text, other))  # noqa: B023
        assert want[:2] == ("refused", AuditFailure.BAD_SIGNATURE)
        assert verdict(lambda: verify_receipt(text, other)) == want  # noqa: B023
    assert verify_receipt(text, KEY).leaf_index == 0


def test_a_batch_size_past_what_python_parses_is_refused_as_an_audit_error() -> None:
    """A signed batch note whose size has more digits than ``int()`` accepts (4300 by default)
    is refused like any other bad size, not with Python's ``ValueError``."""
    receipt = base_receipts()[0]
    line = receipt.json_line()
    for count in ("9" * 5000, "1" + "0" * 4300, "0" * 4301 + "1"):
        note, proofs = v2_batch([line], count=count)
        position = canonical_json({"batch_index": 0, "proof": proofs[0]}).decode()
        with pytest.raises(AuditLogError, match="receipt batch size is not a decimal integer"):
            verify_receipt(v2_text(line, position, note), KEY)
