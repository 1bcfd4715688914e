"""Client CPU per sealed in-session call, in process, no server.

    PYTHONPATH=. .venv/bin/python bench/profile_client.py [--calls 3000] [--skip-ed25519]

Builds a real ``Enclave`` (simulated TEE) in a temporary directory like bench/profile_sealed.py,
opens a session with the real SDK core, captures ONE sealed in-session response of the 1 KB
model (mlp 256-64-10, batch 1; the response carries a real v2 batched receipt), then times with
``time.process_time()`` (best of ``--repeats`` rounds of ``--calls`` each):

- open:   ``ClientCore.open(...)`` + ``ClientCore.infer_result`` (receipt verified every time,
          the batch note cache cleared: a sequential client, whose every note is new)
- open, batch note shared: the same without clearing (calls in flight in one group commit)
- seal:   ``ClientCore.infer_payload`` + ``ClientCore.seal(..., wire=True)`` (in the session)
- parts:  verify_receipt, Receipt.from_json_line, open_response, AttestedEnclave.log_verifier

``--gap 0.002 --calls 100 --repeats 5`` sleeps 2 ms after every call, as a client does while its
call is in flight (the sleep's own system time is measured alone and subtracted): on this VM the
same code then takes 2-3x the CPU time (caches and TLB gone cold, the vCPU woken from idle), which
is what a client pays per call end to end (docs/PERFORMANCE.md).

``--skip-ed25519`` replaces ``Verifier.verify`` by a no-op, so the rows show the work around the
(kept, unchanged, ~105 µs) signature check alone; ``--cprofile open|seal`` profiles one loop.

To time another tree (before a change), put its source roots first on the path, e.g. a
``git worktree`` at /tmp/base: ``PYTHONPATH=/tmp/base/sdk/src:/tmp/base/protos/src ...``.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from enclave_support import write_config
from profile_sealed import _Context, _register, attested_core, mlp

import veil.sdk
from veil.enclave._config import ServerConfig
from veil.enclave._enclave import Enclave
from veil.enclave._service import InferenceServicer
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk._core import ClientCore
from veil.sdk.audit._receipt import Receipt, verify_receipt
from veil.sdk.protocol import Method
from veil.sdk.sealing import open_response, request_digest
from veil.v1 import inference_pb2

warnings.filterwarnings("ignore", message="trusting a test root")


def best(fn: Callable[[], object], calls: int, repeats: int, gap: float = 0.0) -> float:
    """Best µs/call of ``repeats`` rounds (process CPU time: stable on a busy machine).

    With ``gap`` > 0 the loop sleeps that many seconds after each call, as a client does while
    its next request is in flight, and the median round counts (sleeps cost no CPU time).
    """
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(calls):
            fn()
            if gap:
                time.sleep(gap)
        times.append((time.process_time() - t0) / calls * 1e6)
    return statistics.median(times) if gap else min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=250, help="calls per round")
    parser.add_argument("--repeats", type=int, default=40, help="rounds; the best counts")
    parser.add_argument("--cprofile", choices=["open", "seal"], help="profile one loop instead")
    parser.add_argument(
        "--gap",
        type=float,
        default=0.0,
        help="seconds to sleep after each call (a client between calls); median round counts",
    )
    parser.add_argument(
        "--skip-ed25519",
        action="store_true",
        help="(profiling only) replace the receipt's Ed25519 verify by a no-op",
    )
    args = parser.parse_args()
    print(f"veil.sdk from {Path(veil.sdk.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="veil-profile-client-") as tmp:
        data_dir = Path(tmp)
        write_config(data_dir)
        tee = SimulatedSnp.load_or_create(data_dir)
        enclave = Enclave(ServerConfig.load(data_dir), tee)
        try:
            core = attested_core(enclave, tee)
            attested = core.attested
            assert attested is not None
            servicer = InferenceServicer(enclave)
            _register(enclave, "small", mlp([256, 64, 10]))
            x = np.random.default_rng(1).normal(size=(1, 256)).astype(np.float32)
            payload = ClientCore.infer_payload("small", {"x": x}, None)
            opening = core.seal(attested, Method.INFER, payload)
            core.open(
                attested,
                opening,
                servicer.Infer(opening.request, _Context()),  # type: ignore[arg-type]
                inference_pb2.InferResponse(),
            )
            assert core.session is not None, "no session opened"
            call = core.seal(attested, Method.INFER, payload)
            assert call.request.session_id, "not an in-session call"
            response = servicer.Infer(call.request, _Context())  # type: ignore[arg-type]
        finally:
            enclave.close()

    opened = open_response(call, response)
    log_key = attested.log_verifier
    assert log_key is not None
    digest = call.digest or request_digest(call.request)
    response_digest = hashlib.sha256(opened.payload).hexdigest()
    line = opened.receipt.split("\n")[1]
    print(f"request {len(payload)} B, receipt {len(opened.receipt)} B: {line[:60]}...")

    from veil.sdk.audit import _receipt

    forget = getattr(_receipt, "_verified_batch", None)  # the cache of verified batch notes
    clear_cache = forget.cache_clear if forget is not None else (lambda: None)

    def do_open() -> None:
        """A sequential client: every call's batch note is new (verified, not cached)."""
        clear_cache()
        core.receipts.clear()
        out = ClientCore.infer_result(
            core.open(attested, call, response, inference_pb2.InferResponse())
        )
        assert out

    def do_open_shared_note() -> None:
        """Calls in flight together: their receipts share one batch note (cached)."""
        core.receipts.clear()
        ClientCore.infer_result(core.open(attested, call, response, inference_pb2.InferResponse()))

    def do_seal() -> None:
        body = ClientCore.infer_payload("small", {"x": x}, None)
        core.seal(attested, Method.INFER, body, wire=True)

    def do_verify() -> None:
        clear_cache()
        verify_receipt(
            opened.receipt,
            log_key,
            tenant="default",
            request_digest=digest,
            response_digest=response_digest,
        )

    if args.skip_ed25519:
        from veil.sdk.audit._note import Verifier

        Verifier.verify = lambda self, message, signature: None  # type: ignore[method-assign]
    if args.cprofile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        loop = do_open if args.cprofile == "open" else do_seal
        for _ in range(args.calls):
            loop()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        return 0
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from veil.sdk.audit._note import SignedNote

    note = SignedNote.from_text(opened.receipt.split("\n", 4)[4])
    ed_key = Ed25519PublicKey.from_public_bytes(log_key.public_key)
    ed_msg, ed_sig = note.text.encode(), note.signatures[0].signature

    rows = [
        ("open (ClientCore.open + infer_result)", do_open),
        ("open, batch note shared by calls in flight", do_open_shared_note),
        ("seal (infer_payload + ClientCore.seal)", do_seal),
        ("  verify_receipt", do_verify),
        ("  Receipt.from_json_line", lambda: Receipt.from_json_line(line)),
        ("  open_response (AES-GCM + ResponseBody)", lambda: open_response(call, response)),
        ("  AttestedEnclave.log_verifier", lambda: attested.log_verifier),
        ("  infer_payload", lambda: ClientCore.infer_payload("small", {"x": x}, None)),
        ("  Ed25519 verify alone (kept)", lambda: ed_key.verify(ed_sig, ed_msg)),
    ]
    results = {}
    # With --gap, the sleep's own system time (timer, wake-up) counts as process time: measured
    # alone and subtracted from every row, so the rows show what the work itself took.
    sleep_only = best(lambda: None, args.calls, args.repeats, args.gap) if args.gap else 0.0
    if args.gap:
        print(f"{'(the sleep alone, subtracted below)':<44} {sleep_only:8.1f} µs/call")
    for label, fn in rows:
        fn()
        results[label] = best(fn, args.calls, args.repeats, args.gap) - sleep_only
        print(f"{label:<44} {results[label]:8.1f} µs/call")
    ed = results["  Ed25519 verify alone (kept)"]
    if not args.skip_ed25519:
        print(f"{'open minus Ed25519':<44} {results[rows[0][0]] - ed:8.1f} µs/call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
