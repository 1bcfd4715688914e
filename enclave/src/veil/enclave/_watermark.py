"""Watermarking inside the enclave: mark a registered model, or check a mark, for its tenant.

The owner's keys arrive sealed and are used in memory only. Each embedding records the claim's
commitment in the tenant's audit log (a timestamp proving the mark predates any dispute).
"""

from __future__ import annotations

from collections.abc import Callable

from veil.enclave._datasets import DatasetStore
from veil.enclave._errors import InvalidInput
from veil.enclave._handled import EnclaveContext, Handled, model_info
from veil.enclave._onnx import validate_onnx
from veil.sdk.errors import ConfigError, WatermarkError
from veil.v1 import watermark_pb2

__all__ = ["WatermarkDesk"]

DEFAULT_THRESHOLD = 1e-9


class WatermarkDesk:
    def __init__(self, enclave: EnclaveContext, datasets: Callable[[], DatasetStore]) -> None:
        self._enclave = enclave
        self._datasets = datasets  # the training desk's store (loaded on first use)

    def embed(self, tenant: str, req: watermark_pb2.EmbedWatermarkRequest) -> Handled:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from veil.privacy import load_dataset
        from veil.watermark import DEFAULT_EMBED_EPOCHS, WatermarkKey, embed_onnx

        enclave = self._enclave
        source = enclave.store.resolve(tenant, req.model)
        model = enclave.store.load(source)
        if len(req.owner_private_key) != 32:
            raise InvalidInput("owner_private_key must be a 32-byte Ed25519 seed")
        owner = Ed25519PrivateKey.from_private_bytes(req.owner_private_key)
        meta, data = self._datasets().get(tenant, req.dataset_sha256)
        try:
            key = WatermarkKey.from_json(req.watermark_key_json)
            dataset = load_dataset(data, meta.format, label_column=meta.label_column or None)
            result = embed_onnx(
                model,
                owner_key=owner,
                key=key,
                x=dataset.features.reshape(dataset.num_rows, -1),
                y=dataset.labels,
                now=enclave.clock(),
                epochs=req.epochs or DEFAULT_EMBED_EPOCHS,
            )
        except (WatermarkError, ConfigError) as exc:
            raise InvalidInput(str(exc).splitlines()[0]) from exc
        validated = validate_onnx(
            result.model,
            max_bytes=enclave.config.max_model_bytes,
            allowed_domains=enclave.config.allowed_domains,
            limits=enclave.config.limits,
        )
        marked = enclave.store.register(tenant, source.name, result.model, validated)
        claim = result.claim
        return Handled(
            watermark_pb2.EmbedWatermarkResponse(
                model=model_info(marked),
                claim_json=claim.to_json(),
                p_value=result.verdict.p_value,
                matches=result.verdict.matches,
                n_bits=result.verdict.n_bits,
                accuracy_before=result.accuracy_before,
                accuracy_after=result.accuracy_after,
            ),
            resource=marked.ref,
            details={
                "source_model": source.ref,
                "source_sha256": source.sha256,
                "model_sha256": marked.sha256,
                "claim_sha256": claim.digest(),
                "commitment": claim.commitment.hex(),
                "owner_public_key": claim.owner_public_key.hex(),
            },
            model_digest=marked.sha256,
        )

    def verify(self, tenant: str, req: watermark_pb2.VerifyWatermarkRequest) -> Handled:
        from veil.watermark import WatermarkClaim, WatermarkKey, verify

        enclave = self._enclave
        record = enclave.store.resolve(tenant, req.model)
        model = enclave.store.load(record)
        threshold = req.threshold or DEFAULT_THRESHOLD
        try:
            claim = WatermarkClaim.from_json(req.claim_json)
            key = WatermarkKey.from_json(req.opening_json)
            verdict = verify(model, claim, key, threshold=threshold)
        except WatermarkError as exc:
            raise InvalidInput(str(exc).splitlines()[0]) from exc
        return Handled(
            watermark_pb2.VerifyWatermarkResponse(
                detected=verdict.detected,
                p_value=verdict.p_value,
                matches=verdict.matches,
                n_bits=verdict.n_bits,
                threshold=verdict.threshold,
                model_sha256=verdict.model_sha256,
                claim_sha256=verdict.claim_sha256,
            ),
            resource=record.ref,
            details={
                "claim_sha256": claim.digest(),
                "detected": verdict.detected,
                "p_value": repr(verdict.p_value),
                "matches": verdict.matches,
                "n_bits": verdict.n_bits,
            },
            model_digest=record.sha256,
        )
