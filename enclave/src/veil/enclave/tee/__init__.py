"""TEE evidence providers: configfs-tsm, /dev/sev-guest, recorded GPU evidence, simulated SNP.

``select_provider`` picks one for ``veil serve --tee auto|sev-snp|tdx|simulated``.
"""

from veil.enclave.tee._base import RawEvidence, TeeProvider
from veil.enclave.tee._configfs import ConfigfsTsm, SnpCertTable, TsmError, TsmFilesystem
from veil.enclave.tee._nvidia_gpu import GpuEvidence, GpuEvidenceSource, RecordedGpuEvidence
from veil.enclave.tee._select import ProviderSelection, load_sealing_key_file, select_provider
from veil.enclave.tee._sev_guest import SevGuestDevice

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
