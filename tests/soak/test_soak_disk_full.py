"""A full disk: precise refusals, attestation keeps working, recovery without a restart.

The data directory is a real 64 MiB tmpfs. A ballast file outside the server's control fills it:

1. down to just above the audit headroom: an upload that would eat into the headroom is refused
   (RESOURCE_EXHAUSTED, ``storage-full``) while a small upload, inference and listing of both
   tenants still work: the headroom keeps the audit log writable;
2. to the last byte: uploads are refused (``storage-full``) while the audit log's reserve keeps
   records flowing; then inferences are driven on (the ballast refilled each time the log gives
   space back) until an audit append fails, which must happen (else the failure path and its
   recovery went untested). Every refusal is precise (``UNAVAILABLE audit-unavailable`` or
   ``RESOURCE_EXHAUSTED storage-full``, never INTERNAL) and attestation and the health check
   keep working throughout;
3. the ballast is deleted: the same process recovers by itself. Both tenants infer, upload and
   export again, every receipt given before and after verifies against an offline-verified
   export, ``veil audit verify`` accepts the exports, and SIGTERM exits 0.
"""

from __future__ import annotations

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from enclave_support import TENANT_KEYS, mlp_model

from soak.soak_support import (
    MiB,
    VeilServer,
    assert_none,
    big_model,
    make_data_dir,
    prove_receipts,
    run_cli,
)
from veil.sdk import Client, RemoteError

pytestmark = [pytest.mark.soak, pytest.mark.filterwarnings("ignore::veil.sdk.InsecureModeWarning")]

TMPFS_BYTES = 64 * MiB
HEADROOM = 8 * MiB  # limits.audit_headroom_bytes
BIG_UPLOAD_MIB = 4
RECOVERY_SECONDS = 20.0
EXHAUST_ROUNDS = 4  # refills of the disk while driving the audit log to a failed append
EXHAUST_CALLS = 60  # inferences per refill (a few hundred bytes of audit record each)
STORAGE_FULL = ("RESOURCE_EXHAUSTED", "storage-full")
X = {"x": np.zeros((2, 4), np.float32)}
PRECISE = {
    ("UNAVAILABLE", "audit-unavailable"),
    ("RESOURCE_EXHAUSTED", "storage-full"),
}


@contextmanager
def tmpfs(directory: Path, size: int) -> Iterator[Path]:
    directory.mkdir(parents=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True
    )
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], check=False)


def fill(path: Path, *, leave: int) -> None:
    """Grow ``path`` until its filesystem has ``leave`` bytes free (to the page)."""
    with path.open("ab") as ballast:
        for chunk in (MiB, 64 * 1024, 4096):
            while _free(path.parent) - leave >= chunk:
                before = ballast.tell()
                try:
                    ballast.write(b"\0" * chunk)
                    ballast.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    ballast.truncate(before)  # drop what the failed write left half-done
                    break


def _free(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    """("OK", "") or the refusal's (status, reason)."""
    try:
        call()
    except RemoteError as exc:
        return exc.code, exc.reason
    return "OK", ""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_refuses_precisely_and_recovers_without_restart(
    tmp_path: Path, tee_template: Path, figures: Callable[[str, object], None]
) -> None:
    problems: list[str] = []
    big = big_model(BIG_UPLOAD_MIB)
    with tmpfs(tmp_path / "tmpfs", TMPFS_BYTES) as mount:
        limits = {"audit_headroom_bytes": HEADROOM}
        data = make_data_dir(mount / "data", tee_template, limits=limits)
        with VeilServer(data, tmp_path / "server.log") as server:
            clients = {tenant: server.client(tenant, timeout=20.0) for tenant in TENANT_KEYS}
            try:
                for client in clients.values():
                    client.upload_model(mlp_model(), "m")
                    client.infer("m", X)
                ballast = mount / "ballast"

                # 1. just above the headroom: uploads into it refused, everything else works
                fill(ballast, leave=HEADROOM + 2 * MiB)
                figures("free above headroom (MiB)", (_free(mount) - HEADROOM) / MiB)
                near = {
                    "big upload": outcome(lambda: clients["default"].upload_model(big, "big")),
                    "small upload": outcome(
                        lambda: clients["default"].upload_model(mlp_model(seed=4), "small")
                    ),
                    "infer default": outcome(lambda: clients["default"].infer("m", X)),
                    "infer acme": outcome(lambda: clients["acme"].infer("m", X)),
                    "list acme": outcome(lambda: clients["acme"].list_models()),
                }
                for name, got in near.items():
                    figures(f"near full: {name}", " ".join(got).strip())
                    want = STORAGE_FULL if name == "big upload" else ("OK", "")
                    if got != want:
                        problems.append(f"near full, {name}: {got}, expected {want}")

                # 2. no byte left: first with the audit log's reserve, then with it spent too
                rounds = {"full": _full_round(server, clients, big, ballast)}
                refusal, calls = _exhaust(clients["default"], ballast)
                figures("calls until an audit append failed", calls)
                figures("that refusal", " ".join(refusal).strip())
                rounds["full, reserve spent"] = _full_round(server, clients, big, ballast)
                for label, full in rounds.items():
                    for name, got in full.items():
                        figures(f"{label}: {name}", " ".join(got).strip())
                        # With its log writable the upload's own ENOSPC must be the answer;
                        # with the log down too, either precise refusal is right.
                        if name == "big upload" and label == "full" and got != STORAGE_FULL:
                            problems.append(f"{label}, big upload: {got}, not {STORAGE_FULL}")
                        elif name == "big upload" and got not in PRECISE:
                            problems.append(f"{label}, big upload: {got} is not a refusal")
                        elif name == "free (bytes)":
                            continue
                        elif name in ("fresh attestation", "health") and got != ("OK", ""):
                            problems.append(f"{label}, {name} failed: {got}")
                        elif got != ("OK", "") and got not in PRECISE:
                            problems.append(f"{label}, {name}: {got} is not a precise refusal")
                if refusal == ("OK", ""):
                    problems.append(
                        f"{calls} inferences on a full disk all succeeded: the check did not "
                        "exercise a failing audit append, so recovery went untested"
                    )
                elif refusal not in PRECISE:
                    problems.append(f"full disk, inference: {refusal} is not a precise refusal")

                # 3. space comes back: the same process recovers by itself
                ballast.unlink()
                freed = time.monotonic()
                recovered = _wait_for_inference(clients["default"], RECOVERY_SECONDS)
                figures("recovered after (s)", recovered if recovered is not None else "never")
                if recovered is None:
                    problems.append(f"no recovery within {RECOVERY_SECONDS:.0f} s of freeing space")
                else:
                    _after_recovery(server, clients, big, tmp_path, problems, figures)
                    figures("freed to recovery checks done (s)", time.monotonic() - freed)
                began = time.monotonic()
                code = server.terminate(timeout=30.0)
                figures("SIGTERM exit code", code if code is not None else "did not exit in 30 s")
                figures("SIGTERM to exit (s)", time.monotonic() - began)
                if code != 0:
                    problems.append(f"SIGTERM after the disk-full episode: exit code {code}")
            finally:
                for client in clients.values():
                    client.close()
    assert_none(problems)


def _full_round(
    server: VeilServer, clients: dict[str, Client], big: bytes, ballast: Path
) -> dict[str, tuple[str, str]]:
    """Fill the disk to the last byte, then try every kind of call once."""
    fill(ballast, leave=0)
    return {
        "free (bytes)": (str(_free(ballast.parent)), ""),
        "big upload": outcome(lambda: clients["default"].upload_model(big, "b")),
        "infer default": outcome(lambda: clients["default"].infer("m", X)),
        "list acme": outcome(lambda: clients["acme"].list_models()),
        "checkpoint acme": outcome(lambda: clients["acme"].audit_checkpoint()),
        "fresh attestation": outcome(lambda: _attest(server)),
        "health": outcome(lambda: server.health(timeout=5.0)),
    }


def _exhaust(client: Client, ballast: Path) -> tuple[tuple[str, str], int]:
    """Infer on a full disk until an audit append fails (bounded), refilling whatever space the
    log gives back (its reserve, page slack). The first refusal and the calls it took."""
    calls = 0
    for _ in range(EXHAUST_ROUNDS):
        fill(ballast, leave=0)
        for _ in range(EXHAUST_CALLS):
            calls += 1
            got = outcome(lambda: client.infer("m", X))
            if got != ("OK", ""):
                return got, calls
    return ("OK", ""), calls


def _after_recovery(
    server: VeilServer,
    clients: dict[str, Client],
    big: bytes,
    tmp_path: Path,
    problems: list[str],
    figures: Callable[[str, object], None],
) -> None:
    """Both tenants work again; every receipt is provable; the exports verify offline."""
    root = tmp_path / "root.pem"
    root.write_bytes(server.root_pem())
    proven_total = 0
    for tenant, client in clients.items():
        try:
            client.infer("m", X)
            client.upload_model(big, "after")
            client.list_models()
        except RemoteError as exc:
            problems.append(f"after recovery, {tenant}: {exc.code} {exc.reason}")
            continue
        proven = prove_receipts(server, tenant, client.receipts, tmp_path / f"export-{tenant}")
        problems.extend(f"{tenant}: {failure}" for failure in proven.failures[:5])
        proven_total += proven.receipts
        verified = run_cli("audit", "verify", str(proven.export_dir), "--trust-root", str(root))
        if verified.returncode != 0:
            problems.append(f"veil audit verify, {tenant}: {verified.stderr.strip()}")
    figures("receipts proven after recovery", proven_total)


def _attest(server: VeilServer) -> None:
    with server.client(timeout=10.0) as client:
        client.attest()


def _wait_for_inference(client: Client, seconds: float) -> float | None:
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        try:
            client.infer("m", X)
        except RemoteError:
            time.sleep(0.5)
            continue
        return time.monotonic() - began
    return None
