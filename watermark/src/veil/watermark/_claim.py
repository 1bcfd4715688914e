"""The owner's signed watermark claim.

A claim says: "the model carrying the watermark that key-commitment C opens was marked by the
holder of this Ed25519 key, in this layer, with this many bits, at this time". It holds no secret.
The owner signs the canonical JSON of every field but the signature, prefixed with a domain tag,
so nobody can fabricate a claim for someone else's key. :meth:`WatermarkClaim.from_json` checks
that signature: a claim object with a bad signature never exists.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.sdk.errors import WatermarkError
from veil.watermark._keys import MAX_BITS, MIN_BITS, WatermarkKey
from veil.watermark._locate import LayerLocator
from veil.watermark._trigger import TriggerParams

__all__ = [
    "PROJECTION_SCHEME",
    "EmbeddingReport",
    "ProjectionParams",
    "WatermarkClaim",
    "canonical_json",
]

CLAIM_VERSION = "veil-wm-claim-v1"
PROJECTION_SCHEME = "veil-wm-proj-v1"
_SIGN_DOMAIN = b"veil-wm-claim-sig-v1\x00"
_REDUCTIONS = ("centered", "channel_mean", "unit_gram", "kernel_bag")


def canonical_json(data: object) -> bytes:
    """Deterministic JSON (sorted keys, no spaces, ASCII); signed payloads carry no floats."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise WatermarkError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> datetime:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError as exc:
        raise WatermarkError(f"timestamp {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from exc


@dataclass(frozen=True)
class ProjectionParams:
    """How the layer's weights become the projected vector: ``reduce`` then ``X @ v / |v|``.

    ``centered``: the whole weight, minus its mean over output units, flattened (the default;
    removing the component that independently trained models share keeps the null exact).
    ``channel_mean``: the mean over output channels, as in Uchida et al. (conv layers only).
    ``unit_gram``: the Gram matrix of the layer's output units, each normalised to unit length,
    above its diagonal, minus its mean: invariant to permuting, rescaling or negating output
    units (and so to BatchNorm fused into the layer) and continuous (int8 rounding moves it
    little). Input-side rewrites are not removed: use it on a layer that reads the model input.
    ``kernel_bag`` (conv layers): the balanced bag of kernel directions (``_invariants``),
    invariant to permuting, rescaling or negating units on BOTH sides of the layer.
    """

    reduce: str
    dim: int
    scheme: str = PROJECTION_SCHEME

    def __post_init__(self) -> None:
        if self.reduce not in _REDUCTIONS:
            raise WatermarkError(f"reduction {self.reduce!r} is not one of {_REDUCTIONS}")
        if self.scheme != PROJECTION_SCHEME:
            raise WatermarkError(f"projection scheme {self.scheme!r} is not supported")
        if self.dim <= 0:
            raise WatermarkError(f"projection dimension {self.dim} is not positive")

    def to_dict(self) -> dict[str, object]:
        return {"scheme": self.scheme, "reduce": self.reduce, "dim": self.dim}

    @classmethod
    def from_dict(cls, data: object) -> ProjectionParams:
        if not isinstance(data, dict):
            raise WatermarkError("projection parameters must be a JSON object")
        try:
            dim = data["dim"]
            if type(dim) is not int:
                raise WatermarkError("projection dim must be an integer")
            return cls(reduce=str(data["reduce"]), dim=dim, scheme=str(data["scheme"]))
        except KeyError as exc:
            raise WatermarkError(f"projection parameters lack field {exc}") from exc


@dataclass(frozen=True)
class EmbeddingReport:
    """What the embedder measured on the owner's held-out rows (counts: the claim has no floats).

    ``holdout_rows`` rows of the owner's data were kept out of the fine-tune; the unmarked model
    classified ``correct_before`` of them correctly, the marked one ``correct_after``.
    """

    holdout_rows: int
    correct_before: int
    correct_after: int

    def __post_init__(self) -> None:
        if self.holdout_rows <= 0:
            raise WatermarkError(f"held-out row count {self.holdout_rows} is not positive")
        for count in (self.correct_before, self.correct_after):
            if not 0 <= count <= self.holdout_rows:
                raise WatermarkError(f"correct count {count} is outside [0, {self.holdout_rows}]")

    @property
    def accuracy_before(self) -> float:
        return self.correct_before / self.holdout_rows

    @property
    def accuracy_after(self) -> float:
        return self.correct_after / self.holdout_rows

    @property
    def drop_points(self) -> float:
        """Accuracy lost to the mark, in percentage points (negative: it gained)."""
        return 100.0 * (self.correct_before - self.correct_after) / self.holdout_rows

    def to_dict(self) -> dict[str, object]:
        return {
            "holdout_rows": self.holdout_rows,
            "correct_before": self.correct_before,
            "correct_after": self.correct_after,
        }

    @classmethod
    def from_dict(cls, data: object) -> EmbeddingReport:
        if not isinstance(data, dict):
            raise WatermarkError("embedding report must be a JSON object")
        try:
            values = [data[k] for k in ("holdout_rows", "correct_before", "correct_after")]
        except KeyError as exc:
            raise WatermarkError(f"embedding report lacks field {exc}") from exc
        if not all(type(v) is int for v in values):
            raise WatermarkError("embedding report counts must be integers")
        return cls(*values)


@dataclass(frozen=True)
class WatermarkClaim:
    """A signed, secret-free statement of ownership (see module docstring)."""

    owner_public_key: bytes
    commitment: bytes
    layer: LayerLocator
    n_bits: int
    projection: ProjectionParams
    trigger: TriggerParams | None
    created_at: datetime
    signature: bytes
    embedding: EmbeddingReport | None = None
    """Held-out accuracy before and after embedding (absent from claims made without one)."""
    second: ProjectionParams | None = None
    """A second mark in the same layer with the same message bits, read through this reduction
    and an independent projection (``derive_projection(..., mark=1)``); absent from claims
    with one mark. Verification combines the two with Bonferroni (see ``verify``)."""

    @classmethod
    def create(
        cls,
        *,
        owner_key: Ed25519PrivateKey,
        key: WatermarkKey,
        layer: LayerLocator,
        n_bits: int,
        projection: ProjectionParams,
        trigger: TriggerParams | None,
        now: datetime,
        embedding: EmbeddingReport | None = None,
        second: ProjectionParams | None = None,
    ) -> WatermarkClaim:
        """Build and sign a claim with the owner's Ed25519 key."""
        if not MIN_BITS <= n_bits <= MAX_BITS:
            raise WatermarkError(f"bit count {n_bits} is outside [{MIN_BITS}, {MAX_BITS}]")
        if second is not None and second.reduce == projection.reduce:
            raise WatermarkError(f"the second mark repeats the reduction {second.reduce!r}")
        unsigned = cls(
            owner_public_key=public_key_bytes(owner_key.public_key()),
            commitment=key.commitment(),
            layer=layer,
            n_bits=n_bits,
            projection=projection,
            trigger=trigger,
            created_at=parse_time(format_time(now)),
            signature=b"",
            embedding=embedding,
            second=second,
        )
        signature = owner_key.sign(_SIGN_DOMAIN + canonical_json(unsigned._payload()))
        return cls(**{**unsigned.__dict__, "signature": signature})

    def _payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "version": CLAIM_VERSION,
            "owner_public_key": self.owner_public_key.hex(),
            "commitment": self.commitment.hex(),
            "layer": self.layer.to_dict(),
            "n_bits": self.n_bits,
            "projection": self.projection.to_dict(),
            "trigger": None if self.trigger is None else self.trigger.to_dict(),
            "created_at": format_time(self.created_at),
        }
        if self.embedding is not None:  # only when present: older claims keep their signature
            payload["embedding"] = self.embedding.to_dict()
        if self.second is not None:  # likewise
            payload["second"] = self.second.to_dict()
        return payload

    def verify_signature(self) -> None:
        """Raise :class:`WatermarkError` unless the owner's key signed exactly these fields."""
        try:
            owner = Ed25519PublicKey.from_public_bytes(self.owner_public_key)
            owner.verify(self.signature, _SIGN_DOMAIN + canonical_json(self._payload()))
        except (InvalidSignature, ValueError) as exc:
            raise WatermarkError("claim signature does not verify under the owner's key") from exc

    def to_dict(self) -> dict[str, Any]:
        return {**self._payload(), "signature": self.signature.hex()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical signed claim, to name it in reports."""
        return hashlib.sha256(canonical_json(self.to_dict())).hexdigest()

    @classmethod
    def from_dict(cls, data: object) -> WatermarkClaim:
        if not isinstance(data, dict):
            raise WatermarkError("claim must be a JSON object")
        if data.get("version") != CLAIM_VERSION:
            raise WatermarkError(f"claim version {data.get('version')!r} is not {CLAIM_VERSION}")
        try:
            n_bits = data["n_bits"]
            if type(n_bits) is not int:
                raise WatermarkError("claim n_bits must be an integer")
            owner = bytes.fromhex(str(data["owner_public_key"]))
            commitment = bytes.fromhex(str(data["commitment"]))
            signature = bytes.fromhex(str(data["signature"]))
            raw_trigger = data["trigger"]
            raw_embedding = data.get("embedding")
            raw_second = data.get("second")
            claim = cls(
                owner_public_key=owner,
                commitment=commitment,
                layer=LayerLocator.from_dict(data["layer"]),
                n_bits=n_bits,
                projection=ProjectionParams.from_dict(data["projection"]),
                trigger=None if raw_trigger is None else TriggerParams.from_dict(raw_trigger),
                created_at=parse_time(data["created_at"]),
                signature=signature,
                embedding=None
                if raw_embedding is None
                else EmbeddingReport.from_dict(raw_embedding),
                second=None if raw_second is None else ProjectionParams.from_dict(raw_second),
            )
        except KeyError as exc:
            raise WatermarkError(f"claim lacks field {exc}") from exc
        except ValueError as exc:
            raise WatermarkError(f"claim field is not valid hex: {exc}") from exc
        if len(owner) != 32 or len(commitment) != 32 or len(signature) != 64:
            raise WatermarkError("claim key, commitment or signature has the wrong length")
        if not MIN_BITS <= n_bits <= MAX_BITS:
            raise WatermarkError(f"claim bit count {n_bits} is outside [{MIN_BITS}, {MAX_BITS}]")
        if claim.second is not None and claim.second.reduce == claim.projection.reduce:
            raise WatermarkError(f"the second mark repeats the reduction {claim.second.reduce!r}")
        claim.verify_signature()
        return claim

    @classmethod
    def from_json(cls, text: str | bytes) -> WatermarkClaim:
        """Parse and validate a claim, including its owner signature."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise WatermarkError(f"claim is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
