"""Export and offline verification: a tamper test per failure class, ranged exports, views, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from veil.enclave.audit import AuditLog, ExportFormat, Signer
from veil.sdk.audit import (
    AuditRecord,
    Checkpoint,
    EventType,
    MerkleTree,
    Outcome,
    SignedNote,
    hash_leaf,
    verify_export,
)
from veil.sdk.cli import main
from veil.sdk.errors import AuditLogError, InsecureModeWarning

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
N = 12


def _record(i: int, tenant: str = "acme", origin: str = "ipv4:10.0.0.1") -> AuditRecord:
    return AuditRecord.create(
        now=T0 + timedelta(minutes=i),
        event=EventType.INFERENCE if i % 3 else EventType.MODEL_UPLOADED,
        outcome=Outcome.SUCCESS if i % 4 else Outcome.DENIED,
        tenant=tenant,
        origin=origin,
        key_id=f"key-{i % 2}",
        resource="model:m1",
        details={"n": i},
    )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[AuditLog]:
    audit = AuditLog(
        tmp_path / "log", Signer.generate("veil.test"), clock=lambda: T0, checkpoint_interval=None
    )
    for i in range(N):
        audit.append(_record(i))
    audit.append(_record(0, tenant="beta"))
    yield audit
    audit.close()


@pytest.fixture
def full(log: AuditLog, tmp_path: Path) -> Path:
    out = tmp_path / "full"
    result = log.export("acme", out)
    assert (result.tree_size, result.entry_count) == (N, N)
    return out


def _lines(export: Path) -> list[bytes]:
    return (export / "entries.jsonl").read_bytes().split(b"\n")[:-1]


def _write_lines(export: Path, lines: list[bytes]) -> None:
    (export / "entries.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))


def _reject(export: Path, log: AuditLog, match: str) -> None:
    with pytest.raises(AuditLogError, match=match):
        verify_export(export, expect_vkey=log.vkey)


def test_full_export_verifies(full: Path, log: AuditLog) -> None:
    result = verify_export(full, expect_vkey=log.vkey)
    assert result.full and result.tenant == "acme" and result.entry_count == N
    assert result.checkpoint.size == N and result.checkpoint.root_hash == log.root("acme")
    assert [r.details["n"] for _, r in result.records()] == list(range(N))
    assert (full / "attestation").is_dir()


def test_without_a_pinned_key_verification_warns(full: Path) -> None:
    with pytest.warns(InsecureModeWarning):
        verify_export(full)


def test_edited_line(full: Path, log: AuditLog) -> None:
    lines = _lines(full)
    assert b'"outcome":"success"' in lines[5]
    lines[5] = lines[5].replace(b'"outcome":"success"', b'"outcome":"failure"')
    _write_lines(full, lines)
    _reject(full, log, r"line 6 \(entry 5\) was edited")


def test_edited_last_line(full: Path, log: AuditLog) -> None:
    lines = _lines(full)
    lines[-1] = lines[-1].replace(b'"n":11', b'"n":99')
    _write_lines(full, lines)
    _reject(full, log, rf"line {N} \(entry {N - 1}\) was edited")


def test_inserted_line(full: Path, log: AuditLog) -> None:
    lines = _lines(full)
    lines.insert(3, _record(50).to_line())
    _write_lines(full, lines)
    _reject(full, log, r"line 4 is not a leaf of the signed tree \(entry inserted\)")


def test_appended_line(full: Path, log: AuditLog) -> None:
    _write_lines(full, [*_lines(full), _record(50).to_line()])
    _reject(full, log, rf"line {N + 1} is beyond the signed entries \(entry inserted\)")


def test_deleted_line(full: Path, log: AuditLog) -> None:
    lines = _lines(full)
    del lines[5]
    _write_lines(full, lines)
    _reject(full, log, r"entry 5 is missing before line 6 \(entry deleted\)")


def test_reordered_lines(full: Path, log: AuditLog) -> None:
    lines = _lines(full)
    lines[2], lines[3] = lines[3], lines[2]
    _write_lines(full, lines)
    _reject(full, log, r"line 3 holds entry 3 where entry 2 belongs \(entries reordered\)")


def test_duplicated_line(full: Path, log: AuditLog) -> None:
    lines = _lines(full)
    lines.insert(8, lines[7])
    _write_lines(full, lines)
    _reject(full, log, r"line 9 repeats entry 7 \(entry duplicated\)")


def test_truncated_lines(full: Path, log: AuditLog) -> None:
    _write_lines(full, _lines(full)[:9])
    _reject(full, log, r"ends after line 9; entries 9\.\.11 are missing \(export truncated\)")


def test_file_cut_mid_line(full: Path, log: AuditLog) -> None:
    data = (full / "entries.jsonl").read_bytes()
    (full / "entries.jsonl").write_bytes(data[:-40])
    _reject(full, log, rf"line {N} \(entry {N - 1}\) is cut short")


def test_wrong_checkpoint_from_an_older_export(log: AuditLog, tmp_path: Path) -> None:
    older = tmp_path / "older"
    log.export("acme", older)
    log.append(_record(N))
    newer = tmp_path / "newer"
    log.export("acme", newer)
    shutil.copy(older / "checkpoint", newer / "checkpoint")
    _reject(newer, log, "wrong checkpoint")


def test_wrong_checkpoint_from_another_tenant(log: AuditLog, full: Path, tmp_path: Path) -> None:
    other = tmp_path / "beta"
    log.export("beta", other)
    shutil.copy(other / "checkpoint", full / "checkpoint")
    _reject(full, log, "wrong checkpoint")


def test_edited_checkpoint(full: Path, log: AuditLog) -> None:
    note = (full / "checkpoint").read_text()
    (full / "checkpoint").write_text(note.replace(f"\n{N}\n", f"\n{N - 1}\n", 1))
    _reject(full, log, "checkpoint signature does not verify")


def test_checkpoint_resigned_by_another_key(full: Path, log: AuditLog) -> None:
    attacker = Signer.generate(log.signer.name)  # same name, attacker's key
    body = SignedNote.from_text((full / "checkpoint").read_text()).text
    (full / "checkpoint").write_text(attacker.sign_note(body))
    _reject(full, log, "re-signed")


def test_swapped_key(full: Path, log: AuditLog) -> None:
    """An attacker rewrites history and ships their own key with a matching checkpoint."""
    attacker = Signer.generate(log.signer.name)
    lines = _lines(full)[:5]
    _write_lines(full, lines)
    tree = MerkleTree(hash_leaf(x) for x in lines)
    body = Checkpoint(log.origin("acme"), 5, tree.root()).to_text()
    (full / "checkpoint").write_text(attacker.sign_note(body))
    (full / "log.pub").write_text(attacker.vkey + "\n")
    (full / "leafhashes.bin").unlink()
    _reject(full, log, r"log.pub is not the expected key \(swapped key\)")
    with pytest.raises(AuditLogError, match="bound by the enclave attestation"):
        verify_export(full, attestation_check=lambda _: log.vkey)
    with pytest.warns(InsecureModeWarning):
        assert verify_export(full).entry_count == 5  # self-consistent, hence the warning


def test_attestation_check_is_called_with_the_directory(full: Path, log: AuditLog) -> None:
    seen: list[Path] = []

    def check(directory: Path) -> str:
        seen.append(directory)
        return log.vkey

    assert verify_export(full, attestation_check=check).vkey == log.vkey
    assert seen == [full]


def _ranged(log: AuditLog, tmp_path: Path) -> Path:
    out = tmp_path / "ranged"
    result = log.export(
        "acme", out, since=T0 + timedelta(minutes=3), until=T0 + timedelta(minutes=9)
    )
    assert (result.tree_size, result.entry_count) == (N, 6)
    return out


def test_ranged_export_verifies_with_proofs(log: AuditLog, tmp_path: Path) -> None:
    out = _ranged(log, tmp_path)
    result = verify_export(out, expect_vkey=log.vkey)
    assert not result.full
    assert result.indices == (3, 4, 5, 6, 7, 8)
    assert [r.details["n"] for _, r in result.records()] == [3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (
            lambda ls: [*ls[:2], ls[2].replace(b'"n":5', b'"n":6'), *ls[3:]],
            r"line 3 \(entry 5\) was edited",
        ),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], r"line 2 holds entry 5 where entry 4 belongs"),
        (lambda ls: [*ls[:3], *ls[4:]], r"entry 6 is missing before line 4"),
        (lambda ls: [*ls[:3], ls[2], *ls[3:]], r"line 4 repeats entry 5"),
        (lambda ls: ls[:4], r"entries 7\.\.8 are missing \(export truncated\)"),
    ],
)
def test_ranged_export_tampering(
    log: AuditLog, tmp_path: Path, tamper: Callable[[list[bytes]], list[bytes]], match: str
) -> None:
    out = _ranged(log, tmp_path)
    _write_lines(out, tamper(_lines(out)))
    _reject(out, log, match)


def test_ranged_export_with_tampered_proofs(log: AuditLog, tmp_path: Path) -> None:
    out = _ranged(log, tmp_path)
    rows = (out / "proofs.jsonl").read_text().splitlines()
    row = json.loads(rows[1])
    row["index"] += 1
    rows[1] = json.dumps(row)
    (out / "proofs.jsonl").write_text("\n".join(rows) + "\n")
    _reject(out, log, "proofs.jsonl line 2 does not prove a leaf")


def test_export_refuses_a_non_empty_directory(log: AuditLog, full: Path) -> None:
    with pytest.raises(AuditLogError, match="not empty"):
        log.export("acme", full)


def test_ocsf_and_csv_views_carry_index_and_leaf_hash(log: AuditLog, tmp_path: Path) -> None:
    log.append(_record(N, origin='=HYPERLINK("http://evil")'))
    out = tmp_path / "views"
    log.export("acme", out, fmt={ExportFormat.JSONL, ExportFormat.OCSF, ExportFormat.CSV})
    events = [json.loads(x) for x in (out / "ocsf.jsonl").read_text().splitlines()]
    assert len(events) == N + 1
    first = events[0]
    assert (first["class_uid"], first["category_uid"], first["activity_id"]) == (6003, 6, 1)
    assert first["type_uid"] == 600301
    assert first["metadata"]["sequence"] == 0
    assert first["metadata"]["uid"] == log.leaf_hash("acme", 0).hex()
    assert first["metadata"]["version"].startswith("1.")
    assert first["status_id"] == 2  # record 0 was denied
    assert events[1]["activity_id"] == 2 and events[1]["status_id"] == 1
    with (out / "entries.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(N + 1))
    assert rows[5]["leaf_hash"] == log.leaf_hash("acme", 5).hex()
    assert rows[N]["origin"] == '\'=HYPERLINK("http://evil")'
    for r in rows:
        assert not any(v.startswith(("=", "+", "-", "@", "\t", "\r")) for v in r.values())
    verify_export(out, expect_vkey=log.vkey)  # the views do not disturb verification


def _cli(argv: list[str]) -> int:
    return main(argv)  # the whole `veil` command, in this process


def test_cli_verify(full: Path, log: AuditLog, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _cli(["audit", "verify", str(full), "--no-attestation", "--expect-key", log.vkey, "--json"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["verified"] is True and summary["entries"] == N
    _write_lines(full, _lines(full)[:-1])
    assert _cli(["audit", "verify", str(full), "--no-attestation", "--expect-key", log.vkey]) == 1
    assert "export truncated" in capsys.readouterr().err
    other = Signer.generate("veil.test").vkey
    assert _cli(["audit", "verify", str(full), "--no-attestation", "--expect-key", other]) == 1
    assert "swapped key" in capsys.readouterr().err


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["audit"]) == 2
    assert _cli(["audit", "verify"]) == 2
    assert len(capsys.readouterr().err.splitlines()) == 2  # one line each


def test_empty_exports_verify(log: AuditLog, tmp_path: Path) -> None:
    empty_full = tmp_path / "empty-full"
    log.export("nobody", empty_full)
    result = verify_export(empty_full, expect_vkey=log.vkey)
    assert (result.entry_count, result.checkpoint.size, result.tenant) == (0, 0, "nobody")
    empty_range = tmp_path / "empty-range"
    log.export("acme", empty_range, since=T0 + timedelta(days=1))
    result = verify_export(empty_range, expect_vkey=log.vkey)
    assert (result.entry_count, result.checkpoint.size, result.full) == (0, N, False)
