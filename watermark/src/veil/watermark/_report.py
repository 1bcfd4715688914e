"""Signed verification reports: JSON for machines, one self-contained HTML page for people.

The verifier signs the canonical JSON of the report (model digest, full claim, commitment,
p-value, time from an injected clock) with an Ed25519 key passed in. Floats travel as decimal
strings (``repr``) so the signed bytes are canonical.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from veil.sdk.errors import WatermarkError
from veil.watermark._claim import (
    WatermarkClaim,
    canonical_json,
    format_time,
    parse_time,
    public_key_bytes,
)
from veil.watermark._verify import TriggerVerdict, WatermarkVerdict

__all__ = ["VerificationReport"]

REPORT_VERSION = "veil-wm-report-v1"
_SIGN_DOMAIN = b"veil-wm-report-sig-v1\x00"


@dataclass(frozen=True)
class VerificationReport:
    """A verifier's signed statement of what one watermark check measured."""

    model_sha256: str
    claim: WatermarkClaim
    detected: bool
    p_value: float
    matches: int
    n_bits: int
    threshold: float
    trigger_matches: int | None
    trigger_count: int | None
    trigger_p_value: float | None
    verified_at: datetime
    verifier_public_key: bytes
    signature: bytes

    @classmethod
    def create(
        cls,
        verdict: WatermarkVerdict,
        claim: WatermarkClaim,
        *,
        signing_key: Ed25519PrivateKey,
        now: datetime,
        trigger_verdict: TriggerVerdict | None = None,
    ) -> VerificationReport:
        unsigned = cls(
            model_sha256=verdict.model_sha256,
            claim=claim,
            detected=verdict.detected,
            p_value=verdict.p_value,
            matches=verdict.matches,
            n_bits=verdict.n_bits,
            threshold=verdict.threshold,
            trigger_matches=None if trigger_verdict is None else trigger_verdict.matches,
            trigger_count=None if trigger_verdict is None else trigger_verdict.count,
            trigger_p_value=None if trigger_verdict is None else trigger_verdict.p_value,
            verified_at=parse_time(format_time(now)),
            verifier_public_key=public_key_bytes(signing_key.public_key()),
            signature=b"",
        )
        signature = signing_key.sign(_SIGN_DOMAIN + canonical_json(unsigned._payload()))
        return cls(**{**unsigned.__dict__, "signature": signature})

    def _payload(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "model_sha256": self.model_sha256,
            "claim": self.claim.to_dict(),
            "claim_sha256": self.claim.digest(),
            "commitment": self.claim.commitment.hex(),
            "detected": self.detected,
            "p_value": repr(float(self.p_value)),
            "matches": self.matches,
            "n_bits": self.n_bits,
            "threshold": repr(float(self.threshold)),
            "trigger": None
            if self.trigger_count is None
            else {
                "matches": self.trigger_matches,
                "count": self.trigger_count,
                "p_value": repr(float(self.trigger_p_value or 0.0)),
            },
            "verified_at": format_time(self.verified_at),
            "verifier_public_key": self.verifier_public_key.hex(),
        }

    def verify_signature(self, expected_verifier: bytes | None = None) -> None:
        """Raise :class:`WatermarkError` unless the (expected) verifier signed these fields."""
        if expected_verifier is not None and expected_verifier != self.verifier_public_key:
            raise WatermarkError("report was signed by a different verifier key")
        try:
            key = Ed25519PublicKey.from_public_bytes(self.verifier_public_key)
            key.verify(self.signature, _SIGN_DOMAIN + canonical_json(self._payload()))
        except (InvalidSignature, ValueError) as exc:
            raise WatermarkError("report signature does not verify") from exc

    def to_json(self) -> str:
        return json.dumps({**self._payload(), "signature": self.signature.hex()}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> VerificationReport:
        """Parse a report and check its signature (and the embedded claim's)."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
                raise WatermarkError("not a veil watermark report")
            trigger = data["trigger"]
            report = cls(
                model_sha256=str(data["model_sha256"]),
                claim=WatermarkClaim.from_dict(data["claim"]),
                detected=bool(data["detected"]),
                p_value=float(str(data["p_value"])),
                matches=int(data["matches"]),
                n_bits=int(data["n_bits"]),
                threshold=float(str(data["threshold"])),
                trigger_matches=None if trigger is None else int(trigger["matches"]),
                trigger_count=None if trigger is None else int(trigger["count"]),
                trigger_p_value=None if trigger is None else float(str(trigger["p_value"])),
                verified_at=parse_time(data["verified_at"]),
                verifier_public_key=bytes.fromhex(str(data["verifier_public_key"])),
                signature=bytes.fromhex(str(data["signature"])),
            )
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
            raise WatermarkError(f"report is malformed: {exc}") from exc
        except ValueError as exc:
            raise WatermarkError(f"report field is invalid: {exc}") from exc
        report.verify_signature()
        return report

    def to_html(self) -> str:
        """One self-contained page (inline CSS, no scripts, no external resources)."""
        e = html.escape
        outcome = "DETECTED" if self.detected else "NOT DETECTED"
        colour = "#0a7d32" if self.detected else "#a3122a"
        layer = self.claim.layer.describe()
        rows = [
            ("Model SHA-256", self.model_sha256),
            ("Owner public key (Ed25519)", self.claim.owner_public_key.hex()),
            ("Key commitment", self.claim.commitment.hex()),
            ("Claim SHA-256", self.claim.digest()),
            ("Claim created", format_time(self.claim.created_at)),
            ("Marked layer", layer),
            ("Matching bits", f"{self.matches} / {self.n_bits}"),
            ("Bit error rate", f"{1 - self.matches / self.n_bits:.4f}"),
            ("Exact binomial p-value", f"{self.p_value:.6g}"),
            ("Decision threshold", f"p < {self.threshold:.3g}"),
        ]
        if self.trigger_count is not None:
            rows.append(
                (
                    "Trigger set (black-box)",
                    f"{self.trigger_matches} / {self.trigger_count} matches, "
                    f"p = {(self.trigger_p_value or 0.0):.6g}",
                )
            )
        rows += [
            ("Verified at", format_time(self.verified_at)),
            ("Verifier public key", self.verifier_public_key.hex()),
            ("Report signature", self.signature.hex()),
        ]
        body = "\n".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in rows)
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Veil watermark verification report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; color: #222; }}
h1 {{ font-size: 1.4rem; }} .verdict {{ color: {colour}; font-weight: bold; font-size: 1.6rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #ddd; }}
th {{ width: 16rem; }} code {{ word-break: break-all; font-size: .85rem; }}
p.note {{ font-size: .85rem; color: #555; }}
</style></head><body>
<h1>Veil watermark verification report</h1>
<p class="verdict">{e(outcome)}</p>
<table>
{body}
</table>
<p class="note">The p-value is the exact probability that a model carrying no watermark matches
at least this many of the owner's message bits (each bit matches with probability 1/2). The
machine-readable JSON report carries the Ed25519 signature over all of these fields.</p>
</body></html>
"""
