"""TEE evidence providers: configfs-tsm, /dev/sev-guest, recorded GPU evidence, simulated SNP.

``select_provider`` picks one for ``veil serve --tee auto|sev-snp|tdx|simulated``.
"""

from enclave.tee._base import RawEvidence, TeeProvider
from enclave.tee._configfs import ConfigfsTsm, SnpCertTable, TsmError, TsmFilesystem
from enclave.tee._nvidia_gpu import GpuEvidence, GpuEvidenceSource, RecordedGpuEvidence
from enclave.tee._select import ProviderSelection, load_sealing_key_file, select_provider
from enclave.tee._sev_guest import SevGuestDevice

__all__ = [
    "ConfigfsTsm",
    "GpuEvidence",
    "GpuEvidenceSource",
    "ProviderSelection",
    "RawEvidence",
    "RecordedGpuEvidence",
    "SevGuestDevice",
    "SnpCertTable",
    "TeeProvider",
    "TsmError",
    "TsmFilesystem",
    "load_sealing_key_file",
    "select_provider",
]
