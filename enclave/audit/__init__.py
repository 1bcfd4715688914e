"""Writer side of Veil's audit log: durable group-commit logs, signed checkpoints, receipts.

Verification (Merkle proofs, signed notes, receipts, exports) lives in ``sdk.audit``.
"""

from enclave.audit._log import Appended, AuditLog, ExportFormat, ExportResult
from enclave.audit._reserve import HeadroomReserve
from enclave.audit._signer import Signer
from enclave.audit._tally import EventTally
from enclave.audit._tenant_log import FileOps, OsFileOps, TenantLog
from enclave.audit._views import csv_safe, to_ocsf

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
