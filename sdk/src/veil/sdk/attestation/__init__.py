"""Attestation verifiers. One code path verifies real hardware evidence and the simulated TEE's.

SEV-SNP lives here; Intel TDX and NVIDIA GPU verifiers live in the ``tdx`` and ``nvidia``
subpackages.
"""

from veil.sdk.attestation._composite import VerifiedComposite, gpu_nonce_for
from veil.sdk.attestation._policy import AttestationPolicy, GpuRequirement
from veil.sdk.attestation._policy_file import (
    GpuPolicy,
    PolicyFile,
    Release,
    load_policy,
    load_signed_policy,
    parse_policy,
)
from veil.sdk.attestation._roots import TrustRoot, amd_roots
from veil.sdk.attestation._snp_verify import SnpCertChain, VerifiedSnpReport, verify_snp_report
from veil.sdk.attestation.snp_report import Product, SnpReport, TcbVersion

__all__ = [
    "AttestationPolicy",
    "GpuPolicy",
    "GpuRequirement",
    "PolicyFile",
    "Product",
    "Release",
    "SnpCertChain",
    "SnpReport",
    "TcbVersion",
    "TrustRoot",
    "VerifiedComposite",
    "VerifiedSnpReport",
    "amd_roots",
    "gpu_nonce_for",
    "load_policy",
    "load_signed_policy",
    "parse_policy",
    "verify_snp_report",
]
