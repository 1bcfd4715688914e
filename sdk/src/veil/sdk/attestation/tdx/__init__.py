"""Intel TDX attestation: parse DCAP quotes (v4, v5), verify them offline against Intel PCS
collateral and a ``TdxPolicy``, fail closed.

    quote = TdxQuote.from_bytes(raw)
    collateral = TdxCollateral.from_dir("pcs-responses/")
    verified = verify_tdx_quote(quote, collateral, TdxPolicy.production(report_data=rd), now=now)
"""

from veil.sdk.attestation.tdx._collateral import (
    QeIdentity,
    TcbInfo,
    TcbLevel,
    TcbStatus,
    TdxCollateral,
)
from veil.sdk.attestation.tdx._pck import PckExtensions
from veil.sdk.attestation.tdx._policy import TdxPolicy, intel_sgx_root_ca
from veil.sdk.attestation.tdx._quote import QeReport, TdReportBody, TdxQuote, TdxQuoteSignature
from veil.sdk.attestation.tdx._verify import (
    TcbEvaluation,
    VerifiedTdxQuote,
    VerifiedTdxSignature,
    evaluate_tcb,
    select_qe_identity,
    select_tcb_info,
    verify_tdx_quote,
    verify_tdx_signature,
)

__all__ = [
    "PckExtensions",
    "QeIdentity",
    "QeReport",
    "TcbEvaluation",
    "TcbInfo",
    "TcbLevel",
    "TcbStatus",
    "TdReportBody",
    "TdxCollateral",
    "TdxPolicy",
    "TdxQuote",
    "TdxQuoteSignature",
    "VerifiedTdxQuote",
    "VerifiedTdxSignature",
    "evaluate_tcb",
    "intel_sgx_root_ca",
    "select_qe_identity",
    "select_tcb_info",
    "verify_tdx_quote",
    "verify_tdx_signature",
]
