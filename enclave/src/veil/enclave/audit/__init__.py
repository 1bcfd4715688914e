"""Writer side of Veil's audit log: durable group-commit logs, signed checkpoints, receipts.

Verification (Merkle proofs, signed notes, receipts, exports) lives in ``veil.sdk.audit``.
"""

from veil.enclave.audit._log import Appended, AuditLog, ExportFormat, ExportResult
from veil.enclave.audit._reserve import HeadroomReserve
from veil.enclave.audit._signer import Signer
from veil.enclave.audit._tally import EventTally
from veil.enclave.audit._tenant_log import FileOps, OsFileOps, TenantLog
from veil.enclave.audit._views import csv_safe, to_ocsf

__all__ = [
    "Appended",
    "AuditLog",
    "EventTally",
    "ExportFormat",
    "ExportResult",
    "FileOps",
    "HeadroomReserve",
    "OsFileOps",
    "Signer",
    "TenantLog",
    "csv_safe",
    "to_ocsf",
]
