"""NVIDIA GPU / NVSwitch confidential-computing attestation, offline and fail-closed.

    ev = SpdmEvidence.from_bytes(raw)
    rims = [verify_rim(store.get(rim_id), now=now) for rim_id in ev.rim_ids]
    verified = verify_gpu_evidence(ev, chain_pem, nonce=nonce, rims=rims, now=now)

``store`` is any ``RimStore`` (``DirectoryRimStore`` air-gapped); revocation (OCSP) goes through
a ``RevocationSource`` (``OfflineOcspCache`` air-gapped). No function here opens the network.
"""

from veil.sdk.attestation.nvidia._rim import (
    DirectoryRimStore,
    MappingRimStore,
    ReferenceMeasurement,
    RimStore,
    VerifiedRim,
    verify_rim,
)
from veil.sdk.attestation.nvidia._roots import nvidia_device_root, nvidia_rim_root
from veil.sdk.attestation.nvidia._spdm import MeasurementBlock, SpdmEvidence
from veil.sdk.attestation.nvidia._verify import (
    OfflineOcspCache,
    RevocationSource,
    VerifiedGpuEvidence,
    VerifiedSpdmSignature,
    verify_gpu_evidence,
    verify_spdm_signature,
)

__all__ = [
    "DirectoryRimStore",
    "MappingRimStore",
    "MeasurementBlock",
    "OfflineOcspCache",
    "ReferenceMeasurement",
    "RevocationSource",
    "RimStore",
    "SpdmEvidence",
    "VerifiedGpuEvidence",
    "VerifiedRim",
    "VerifiedSpdmSignature",
    "nvidia_device_root",
    "nvidia_rim_root",
    "verify_gpu_evidence",
    "verify_rim",
    "verify_spdm_signature",
]
