"""Veil SDK: verify an enclave's attestation, then talk to it with every byte sealed.

    from veil.sdk import AttestationPolicy, Client

    policy = AttestationPolicy.production(measurements=["<96 hex digits>"])
    with Client("enclave.example:7443", api_key=Path("default.key"), policy=policy) as client:
        client.upload_model("model.onnx", name="scorer")
        scores = client.infer("scorer", {"x": batch})

Nothing is sent to an enclave before its evidence verifies under the policy; every failure
raises a subclass of :class:`VeilError`.
"""

from veil.sdk._client import AsyncClient, AsyncTrainingJob, Client, TrainingJob
from veil.sdk._core import TlsOptions
from veil.sdk._models import ModelInfo, TensorInfo, WatermarkCheck, WatermarkEmbedding
from veil.sdk._training import (
    BudgetInfo,
    DatasetInfo,
    TrainingOutcome,
    TrainingProgress,
    VerifiedTrainingRecord,
    verify_training_record,
)
from veil.sdk.attestation import (
    AttestationPolicy,
    GpuRequirement,
    Product,
    SnpCertChain,
    SnpReport,
    TcbVersion,
    TrustRoot,
    VerifiedSnpReport,
    verify_snp_report,
)
from veil.sdk.errors import (
    AttestationError,
    AttestationFailure,
    AuditFailure,
    AuditLogError,
    ConfigError,
    ConfigFailure,
    DecryptionError,
    InsecureModeWarning,
    PrivacyBudgetExceeded,
    ProtocolError,
    ProtocolFailure,
    RemoteError,
    RemoteReason,
    VeilError,
    WatermarkError,
    WatermarkFailure,
)
from veil.sdk.evidence import AttestedEnclave, EnclaveClaims, Evidence, verify_enclave
from veil.sdk.protocol import Suite

__all__ = [
    "AsyncClient",
    "AsyncTrainingJob",
    "AttestationError",
    "AttestationFailure",
    "AttestationPolicy",
    "AttestedEnclave",
    "AuditFailure",
    "AuditLogError",
    "BudgetInfo",
    "Client",
    "ConfigError",
    "ConfigFailure",
    "DatasetInfo",
    "DecryptionError",
    "EnclaveClaims",
    "Evidence",
    "GpuRequirement",
    "InsecureModeWarning",
    "ModelInfo",
    "PrivacyBudgetExceeded",
    "Product",
    "ProtocolError",
    "ProtocolFailure",
    "RemoteError",
    "RemoteReason",
    "SnpCertChain",
    "SnpReport",
    "Suite",
    "TcbVersion",
    "TensorInfo",
    "TlsOptions",
    "TrainingJob",
    "TrainingOutcome",
    "TrainingProgress",
    "TrustRoot",
    "VeilError",
    "VerifiedSnpReport",
    "VerifiedTrainingRecord",
    "WatermarkCheck",
    "WatermarkEmbedding",
    "WatermarkError",
    "WatermarkFailure",
    "verify_enclave",
    "verify_snp_report",
    "verify_training_record",
]
