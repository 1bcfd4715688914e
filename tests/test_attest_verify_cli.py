"""``veil attest verify`` for SEV-SNP, TDX and NVIDIA GPU evidence: real vectors at fixed times,
one rejection (exit 1) per failure mode, usage errors (exit 2), and the JSON step trace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from veil.sdk.attestation._policy_file import sign_policy, signature_path
from veil.sdk.cli import main
from veil.sdk.errors import InsecureModeWarning

SNP_AT = "2026-01-15T00:00:00Z"
TDX_AT = "2026-02-05T00:00:00Z"
GPU_AT = "2025-01-01T00:00:00Z"
HOPPER_NONCE = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
SNP_STEPS = ["parse", "certificates", "chain", "report_signature", "vcek_binding", "policy"]
TDX_STEPS = ["parse", "signature", "tcb_info", "qe_identity", "tcb_evaluation", "policy"]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(["attest", "verify", *args])
    out = capsys.readouterr()
    doc = json.loads(out.out) if out.out.strip().startswith("{") else {}
    return code, doc, out.err


def steps(doc: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(s["step"], s["ok"]) for s in doc["steps"]]


# -- SEV-SNP ---------------------------------------------------------------------------------

SNP_SETS = [
    ("routex-lua/report-turin.bin", ["--certs", "routex-lua/vcek-chain-turin.pem"], "Turin"),
    ("routex-lua/report-genoa-v5.bin", ["--certs", "routex-lua/vcek-chain-genoa-v5.pem"], "Genoa"),
    (
        "virtee-sev/report_milan.bin",
        ["--certs", "virtee-sev/cert_chain_milan.pem", "--vcek", "virtee-sev/vcek_milan.der"],
        "Milan",
    ),
    (
        "teekit-gcp/sev-gcp.bin",
        ["--certs", "teekit-gcp/sev-gcp-cert-chain.pem", "--vcek", "teekit-gcp/sev-gcp-vcek.pem"],
        "Milan",
    ),
]


def _snp(vectors: Path, report: str, extra: list[str]) -> list[str]:
    base = vectors / "sev-snp"
    out = [str(base / report)]
    for i, item in enumerate(extra):
        out.append(str(base / item) if i % 2 else item)
    return out


@pytest.mark.parametrize(("report", "extra", "product"), SNP_SETS)
def test_snp_real_reports_verify_with_a_full_trace(
    vectors: Path, capsys: pytest.CaptureFixture[str], report: str, extra: list[str], product: str
) -> None:
    code, doc, err = run(capsys, *_snp(vectors, report, extra), "--at", SNP_AT, "--json")
    assert code == 0, err
    assert doc["verified"] is True and doc["tee"] == "sev-snp" and doc["product"] == product
    assert steps(doc) == [(s, True) for s in SNP_STEPS]
    assert doc["insecure_root"] is False


def _snp_reject(
    vectors: Path, capsys: pytest.CaptureFixture[str], report: str, extra: list[str], *more: str
) -> dict[str, Any]:
    code, doc, err = run(capsys, *_snp(vectors, report, extra), "--at", SNP_AT, *more, "--json")
    assert code == 1, err
    assert doc["verified"] is False and doc["error"]["reason"] in err
    return doc


def test_snp_debug_guest_fails_at_policy(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--certs", "go-sev-guest/ask_ark_milan.pem", "--vcek", "go-sev-guest/vcek_milan.der"]
    doc = _snp_reject(vectors, capsys, "go-sev-guest/attestation.bin", extra)
    assert doc["error"]["reason"] == "debug_enclave"
    assert steps(doc)[-4:] == [
        ("chain", True),
        ("report_signature", True),
        ("vcek_binding", True),
        ("policy", False),
    ]
    code, _, err = run(
        capsys,
        *_snp(vectors, "go-sev-guest/attestation.bin", extra),
        "--at",
        SNP_AT,
        "--allow-debug",
    )
    assert code == 0, err


def test_snp_wrong_product_chain(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra = ["--certs", "routex-lua/vcek-chain-genoa.pem"]
    doc = _snp_reject(vectors, capsys, "routex-lua/report-milan-v3.bin", extra)
    assert doc["error"]["reason"] in ("bad_signature", "cert_mismatch")
    assert steps(doc)[-1][1] is False


def test_snp_bit_flip_breaks_the_signature(
    vectors: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    raw = bytearray((vectors / "sev-snp/routex-lua/report-turin.bin").read_bytes())
    raw[0x90] ^= 1  # MEASUREMENT
    flipped = tmp_path / "flipped.bin"
    flipped.write_bytes(bytes(raw))
    chain = str(vectors / "sev-snp/routex-lua/vcek-chain-turin.pem")
    code, doc, _ = run(capsys, str(flipped), "--certs", chain, "--at", SNP_AT, "--json")
    assert code == 1 and doc["error"]["reason"] == "bad_signature"
    assert steps(doc)[-2:] == [("chain", True), ("report_signature", False)]


def test_snp_expired_chain(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, extra, _ = SNP_SETS[0]
    code, doc, _ = run(capsys, *_snp(vectors, report, extra), "--at", "2080-01-01", "--json")
    assert code == 1 and doc["error"]["reason"] == "cert_expired"
    assert steps(doc)[-1] == ("chain", False)


def test_snp_measurement_and_report_data(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, extra, _ = SNP_SETS[0]
    rd = (vectors / "sev-snp" / report).read_bytes()[0x50:0x90].hex()
    doc = _snp_reject(vectors, capsys, report, extra, "--expect-measurement", "00" * 48)
    assert doc["error"]["reason"] == "measurement_mismatch"
    doc = _snp_reject(vectors, capsys, report, extra, "--report-data", "ab" * 64)
    assert doc["error"]["reason"] == "unbound_key"
    code, doc, err = run(
        capsys, *_snp(vectors, report, extra), "--at", SNP_AT, "--report-data", rd, "--json"
    )
    assert code == 0, err
    assert "REPORT_DATA == expected" in doc["steps"][-1]["detail"]


def test_snp_untrusted_root(
    vectors: Path, capsys: pytest.CaptureFixture[str], tee_template: Path
) -> None:
    report, extra, _ = SNP_SETS[0]
    pin = str(tee_template / "chain.pem")  # the simulated platform's chain: its ARK is not AMD's
    doc = _snp_reject(vectors, capsys, report, extra, "--trust-root", pin)
    assert doc["error"]["reason"] == "untrusted_root"


# -- TDX -------------------------------------------------------------------------------------


def _tdx(vectors: Path, quote: str, collateral: str, *more: str) -> list[str]:
    d = vectors / "tdx"
    return [str(d / quote), "--collateral", str(d / collateral), *more]


def test_tdx_v5_quote_verifies_with_pcs_collateral(
    vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _tdx(vectors, "go-tdx-guest/quote_v5_sample.dat", "tinfoil-collateral")
    code, doc, err = run(capsys, *args, "--at", TDX_AT, "--json")
    assert code == 0, err
    assert doc["tee"] == "tdx" and doc["tcb_status"] == "UpToDate" and doc["quote_version"] == 5
    assert doc["fmspc"] == "90c06f000000" and doc["insecure_root"] is False
    assert steps(doc) == [(s, True) for s in TDX_STEPS]
    mrtd = doc["mr_td"]
    assert "pinned: nothing" in doc["steps"][-1]["detail"]
    code, doc, err = run(capsys, *args, "--at", TDX_AT, "--expect-measurement", mrtd, "--json")
    assert code == 0, err
    assert "pinned: MRTD" in doc["steps"][-1]["detail"]
    code, doc, _ = run(capsys, *args, "--at", TDX_AT, "--expect-measurement", "00" * 48, "--json")
    assert code == 1 and doc["error"]["reason"] == "measurement_mismatch"


def test_tdx_expired_collateral(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _tdx(vectors, "go-tdx-guest/quote_v5_sample.dat", "tinfoil-collateral")
    code, doc, _ = run(capsys, *args, "--at", "2026-03-01", "--json")
    assert code == 1 and doc["error"]["reason"] == "expired"
    assert steps(doc)[-1][1] is False


def test_tdx_test_root_sample(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = "intel-qvl-sampledata"
    args = _tdx(vectors, f"{d}/quote.dat", d, "--tee", "tdx", "--at", "2025-01-01", "--json")
    code, doc, _ = run(capsys, *args)
    assert code == 1 and doc["error"]["reason"] == "untrusted_root"
    assert steps(doc) == [("parse", True), ("signature", False)]
    root = str(vectors / "tdx" / d / "trustedRootCaCert.pem")
    with pytest.warns(InsecureModeWarning):
        code, doc, _ = run(capsys, *args, "--trust-root", root)
    # Chain, CRLs, signatures and TCB Info verify under the pinned test root; Intel's synthetic
    # QE identity names another MRSIGNER than the sample's QE, and the verifier says so.
    assert code == 1 and doc["error"]["reason"] == "measurement_mismatch"
    assert steps(doc)[:4] == [(s, True) for s in TDX_STEPS[:4]]


def test_tdx_tampered_quote(
    vectors: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    raw = bytearray((vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes())
    raw[200] ^= 0x80  # inside the TD report body
    bad = tmp_path / "quote.dat"
    bad.write_bytes(bytes(raw))
    coll = str(vectors / "tdx/tinfoil-collateral")
    code, doc, _ = run(capsys, str(bad), "--collateral", coll, "--at", TDX_AT, "--json")
    assert code == 1 and doc["error"]["reason"] == "bad_signature"
    assert steps(doc)[-1] == ("signature", False)


def test_tdx_report_data_mismatch(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _tdx(vectors, "go-tdx-guest/quote_v5_sample.dat", "tinfoil-collateral")
    code, doc, _ = run(capsys, *args, "--at", TDX_AT, "--report-data", "00" * 64, "--json")
    assert code == 1 and doc["error"]["reason"] == "stale_nonce"
    assert steps(doc)[-1] == ("policy", False) and steps(doc)[-2] == ("tcb_evaluation", True)


# -- NVIDIA GPU ------------------------------------------------------------------------------


def _gpu(vectors: Path, *more: str) -> list[str]:
    d = vectors / "nvidia-gpu/nvtrust"
    return [
        str(d / "hopperAttestationReport.txt"),
        "--certs",
        str(d / "hopperCertChain.txt"),
        "--at",
        GPU_AT,
        *more,
        "--json",
    ]


def test_gpu_sample_reports_every_mismatching_index(
    vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rim = str(vectors / "nvidia-gpu/nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    code, doc, err = run(capsys, *_gpu(vectors, "--rim", rim, "--nonce", HOPPER_NONCE))
    assert code == 1, err
    assert doc["tee"] == "nvidia-gpu" and doc["error"]["reason"] == "measurement_mismatch"
    assert "index 1, 2, 9, 11" in doc["error"]["message"]
    assert steps(doc) == [
        ("parse", True),
        ("rim:1010_0200_882_96005E0001_PROD.swidtag", True),
        ("signature_chain", True),
        ("nonce", True),
        ("measurements", False),
    ]


def test_gpu_stale_nonce(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rim = str(vectors / "nvidia-gpu/nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    code, doc, _ = run(capsys, *_gpu(vectors, "--rim", rim, "--nonce", "00" * 32))
    assert code == 1 and doc["error"]["reason"] == "stale_nonce"
    assert steps(doc)[-1] == ("nonce", False)


def test_gpu_rim_cache_without_the_evidence_rims(
    vectors: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rims = str(vectors / "nvidia-gpu/nvtrust")
    code, doc, _ = run(capsys, *_gpu(vectors, "--rims", rims))
    assert (
        code == 1
        and doc["error"]["reason"] == "policy"
        and "missing collateral" in doc["error"]["message"]
    )
    assert steps(doc)[-1] == ("rim_lookup:NV_GPU_DRIVER_GH100_550.90.07", False)


def test_gpu_rim_expired_after_june_2025(vectors: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rim = str(vectors / "nvidia-gpu/nvtrust/1010_0200_882_96005E0001_PROD.swidtag")
    args = _gpu(vectors, "--rim", rim)
    args[args.index(GPU_AT)] = "2025-07-01"
    code, doc, _ = run(capsys, *args)
    assert code == 1 and steps(doc)[-1] == ("rim:1010_0200_882_96005E0001_PROD.swidtag", False)


def test_gpu_tampered_evidence(
    vectors: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = vectors / "nvidia-gpu/nvtrust"
    raw = bytearray(bytes.fromhex((d / "hopperAttestationReport.txt").read_text().strip()))
    raw[60] ^= 1  # inside the measurement record
    bad = tmp_path / "evidence.bin"
    bad.write_bytes(bytes(raw))
    rim = str(d / "1010_0200_882_96005E0001_PROD.swidtag")
    args = [str(bad), "--tee", "nvidia-gpu", "--certs", str(d / "hopperCertChain.txt")]
    code, doc, _ = run(capsys, *args, "--rim", rim, "--at", GPU_AT, "--json")
    assert code == 1 and doc["error"]["reason"] == "bad_signature"
    assert steps(doc)[-1] == ("signature_chain", False)


# -- policy files ----------------------------------------------------------------------------


def test_signed_policy_drives_verification(
    vectors: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    report, extra, _ = SNP_SETS[0]
    measurement = (vectors / "sev-snp" / report).read_bytes()[0x90:0xC0].hex()
    policy = tmp_path / "POLICY.toml"
    policy.write_text(
        'version = 1\nallowed_tees = ["sev-snp"]\n[snp]\nallowed_vmpls = [0]\n'
        f'[[release]]\nname = "good"\nsnp_measurements = ["{measurement}"]\n'
        f'[[release]]\nname = "other"\nsnp_measurements = ["{"00" * 48}"]\n'
    )
    key = ed25519.Ed25519PrivateKey.generate()
    signature_path(policy).write_bytes(sign_policy(policy.read_bytes(), key))
    pub = tmp_path / "op.pub"
    pub.write_bytes(key.public_key().public_bytes_raw())
    base = [*_snp(vectors, report, extra), "--at", SNP_AT, "--policy", str(policy)]
    code, _, err = run(capsys, *base, "--policy-key", str(pub), "--release", "good")
    assert code == 0, err
    code, doc, _ = run(capsys, *base, "--policy-key", str(pub), "--release", "other", "--json")
    assert code == 1 and doc["error"]["reason"] == "measurement_mismatch"
    wrong = tmp_path / "wrong.pub"
    wrong.write_bytes(ed25519.Ed25519PrivateKey.generate().public_key().public_bytes_raw())
    code, _, err = run(capsys, *base, "--policy-key", str(wrong))
    assert code == 1 and "bad_signature" in err
    tdx_only = tmp_path / "tdx.toml"
    tdx_only.write_text('version = 1\nallowed_tees = ["tdx"]\n[tdx]\n')
    code, doc, err = run(capsys, *_snp(vectors, report, extra), "--policy", str(tdx_only), "--json")
    assert (
        code == 1
        and doc["error"]["reason"] == "policy"
        and "not allowed" in doc["error"]["message"]
    )
    assert "signature is not checked" in err


# -- usage -----------------------------------------------------------------------------------


def test_usage_errors_exit_2(
    vectors: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    snp = str(vectors / "sev-snp/routex-lua/report-turin.bin")
    chain = str(vectors / "sev-snp/routex-lua/vcek-chain-turin.pem")
    quote = str(vectors / "tdx/go-tdx-guest/quote_v5_sample.dat")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x99" * 300)
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("version = 3\n")
    cases = [
        ([snp], "needs --certs"),
        ([quote], "needs --collateral"),
        ([snp, "--certs", chain, "--at", "yesterday"], "must be an ISO 8601 time"),
        ([str(tmp_path / "absent.bin")], "no such file"),
        ([snp, "--certs", chain, "--policy", str(bad_policy), "--trust-root", chain], "drop"),
        ([snp, "--certs", chain, "--report-data", "xyz"], "argument --report-data: must be hex"),
        ([str(junk), "--tee", "nvidia-gpu", "--certs", chain], "needs reference values"),
        ([snp, "--tee", "sgx"], "invalid choice: 'sgx'"),
    ]
    for args, message in cases:
        code, _, err = run(capsys, *args)
        assert code == 2, (args, err)
        assert message in err, (args, err)
        assert len(err.splitlines()) == 1, err


def test_malformed_evidence_and_policy_are_refused_not_usage(
    vectors: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    snp = vectors / "sev-snp/routex-lua/report-turin.bin"
    chain = str(vectors / "sev-snp/routex-lua/vcek-chain-turin.pem")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x99" * 300)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(snp.read_bytes()[:1180])
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("version = 3\n")
    cases = [
        ([str(junk), "--json"], "malformed", "neither a SEV-SNP report"),
        ([str(truncated), "--certs", chain, "--json"], "malformed", "1180"),
        ([str(snp), "--certs", chain, "--policy", str(bad_policy), "--json"], "", "version"),
    ]
    for args, reason, message in cases:
        code, doc, err = run(capsys, *args)
        assert code == 1, (args, err)
        assert message in doc["error"]["message"] and message in err, (args, err)
        assert not reason or doc["error"]["reason"] == reason
