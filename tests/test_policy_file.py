"""Signed TOML attestation policies: parsing into policy objects, precise errors, signatures,
real evidence verified under a loaded policy, and the ``veil policy`` command."""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.sdk.attestation import (
    AttestationPolicy,
    SnpCertChain,
    TcbVersion,
    amd_roots,
    verify_snp_report,
)
from veil.sdk.attestation._policy_file import (
    load_policy,
    load_signed_policy,
    parse_policy,
    sign_policy,
    signature_path,
)
from veil.sdk.attestation.tdx import TcbStatus, TdxCollateral, intel_sgx_root_ca, verify_tdx_quote
from veil.sdk.cli import main
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError, InsecureModeWarning

TURIN_MEASUREMENT = (
    "f924dd18f168df60fbea937f0b086284d51b1b376de872ba"
    "c43694f61134d57967c318018de7335503023dbb50dee624"
)
SNP_NOW = datetime(2026, 1, 15, tzinfo=UTC)
TDX_NOW = datetime(2026, 2, 5, tzinfo=UTC)

FULL = f"""
version = 1
allowed_tees = ["sev-snp", "tdx", "nvidia-gpu"]
max_evidence_age_seconds = 120

[snp]
roots = ["amd"]
allow_debug = false
allowed_vmpls = [0]
min_tcb = {{bootloader = 1, tee = 0, snp = 2, microcode = 71}}

[tdx]
roots = ["intel"]
accepted_tcb_statuses = ["UpToDate", "SWHardeningNeeded"]
max_collateral_age_seconds = 2592000

[gpu]
device_root = "nvidia"
rim_root = "nvidia"

[[release]]
name = "2026.01"
snp_measurements = ["{TURIN_MEASUREMENT}"]

[[release]]
name = "2026.02"
snp_measurements = ["{"11" * 48}"]
tdx = {{mrtd = "{"22" * 48}", rtmr0 = "{"33" * 48}"}}
"""


def _turin(vectors: Path) -> tuple[bytes, SnpCertChain]:
    base = vectors / "sev-snp/routex-lua"
    report = (base / "report-turin.bin").read_bytes()
    return report, SnpCertChain.from_pem((base / "vcek-chain-turin.pem").read_bytes())


def test_full_policy_builds_the_policy_objects() -> None:
    p = parse_policy(FULL.encode())
    assert p.allowed_tees == {"sev-snp", "tdx", "nvidia-gpu"}
    assert p.max_evidence_age == timedelta(seconds=120)
    assert [r.name for r in p.releases] == ["2026.01", "2026.02"]
    assert p.snp is not None and p.tdx is not None and p.gpu is not None
    assert p.snp.roots == amd_roots() and not p.snp.insecure
    assert p.snp.expected_measurements == {bytes.fromhex(TURIN_MEASUREMENT), b"\x11" * 48}
    assert p.snp.min_tcb == TcbVersion(bootloader=1, tee=0, snp=2, microcode=71)
    assert p.snp.allowed_vmpls == {0} and p.snp.max_evidence_age == timedelta(seconds=120)
    assert p.tdx.roots == (intel_sgx_root_ca(),) and not p.tdx.insecure
    assert p.tdx.accepted_tcb_statuses == {TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED}
    assert p.tdx.mrtd == frozenset({b"\x22" * 48}) and p.tdx.rtmr0 == frozenset({b"\x33" * 48})
    assert p.tdx.rtmr1 is None and p.tdx.max_collateral_age == timedelta(days=30)
    assert p.gpu.device_root is None and not p.gpu.insecure
    assert p.sha256 == hashlib.sha256(FULL.encode()).hexdigest()
    one = p.for_release("2026.01")
    assert one.snp is not None and one.snp.expected_measurements == {
        bytes.fromhex(TURIN_MEASUREMENT)
    }
    assert one.tdx is not None and one.tdx.mrtd is None
    with pytest.raises(ConfigError, match="no release named 'nope'"):
        p.for_release("nope")


def _snp(text: str, release: str | None = None) -> AttestationPolicy:
    p = parse_policy(text.encode())
    snp = (p.for_release(release) if release else p).snp
    assert snp is not None
    return snp


def test_snp_evidence_under_a_loaded_policy(vectors: Path) -> None:
    report, chain = _turin(vectors)
    rd = report[0x50:0x90]  # a loaded policy demands REPORT_DATA binding, as a client's does
    v = verify_snp_report(
        report, chain, _snp(FULL, "2026.01"), now=SNP_NOW, expected_report_data=rd
    )
    assert v.measurement.hex() == TURIN_MEASUREMENT
    with pytest.raises(AttestationError) as err:
        verify_snp_report(
            report, chain, _snp(FULL, "2026.02"), now=SNP_NOW, expected_report_data=rd
        )
    assert err.value.reason is AttestationFailure.MEASUREMENT_MISMATCH
    higher = _snp(FULL.replace("snp = 2,", "snp = 3,"))
    with pytest.raises(AttestationError) as err:
        verify_snp_report(report, chain, higher, now=SNP_NOW, expected_report_data=rd)
    assert err.value.reason is AttestationFailure.TCB_TOO_LOW


def test_tdx_evidence_under_a_loaded_policy(vectors: Path) -> None:
    quote = (vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes()
    collateral = TdxCollateral.from_dir(vectors / "tdx/tinfoil-collateral")
    text = 'version = 1\nallowed_tees = ["tdx"]\n[tdx]\naccepted_tcb_statuses = ["UpToDate"]\n'
    tdx = parse_policy(text.encode()).tdx
    assert tdx is not None
    assert verify_tdx_quote(quote, collateral, tdx, now=TDX_NOW).tcb_status is TcbStatus.UP_TO_DATE
    pinned = parse_policy(FULL.encode()).tdx  # pins another release's MRTD
    with pytest.raises(AttestationError) as err:
        verify_tdx_quote(quote, collateral, pinned, now=TDX_NOW)  # type: ignore[arg-type]
    assert err.value.reason is AttestationFailure.MEASUREMENT_MISMATCH


def test_root_from_file_is_pinned_by_digest_and_insecure(tmp_path: Path, vectors: Path) -> None:
    ark = (vectors / "sev-snp/virtee-sev/turin_ark.pem").read_bytes()
    (tmp_path / "ark.pem").write_bytes(ark)
    digest = hashlib.sha256(ark).hexdigest()
    base = 'version = 1\nallowed_tees = ["sev-snp"]\n[snp]\nroots = [{file = "ark.pem"%s}]\n'
    policy = tmp_path / "p.toml"
    policy.write_text(base % "")
    with pytest.raises(ConfigError, match=rf"snp.roots\[0\].sha256 is required .*{digest}"):
        load_policy(policy)
    policy.write_text(base % f', sha256 = "{"0" * 64}"')
    with pytest.raises(ConfigError, match=r"snp.roots\[0\].sha256 does not match ark.pem"):
        load_policy(policy)
    policy.write_text(base % f', sha256 = "{digest}"')
    snp = load_policy(policy).snp
    assert snp is not None and len(snp.roots) == 1
    # AMD's own ARK given as a file is recognised as the built-in (secure) root
    assert not snp.insecure and snp.roots[0] in amd_roots()
    sim = tmp_path / "sim.pem"
    other = (vectors / "tdx/intel-qvl-sampledata/trustedRootCaCert.pem").read_bytes()
    sim.write_bytes(other)
    policy.write_text(
        'version = 1\nallowed_tees = ["tdx"]\n[tdx]\n'
        f'roots = [{{file = "sim.pem", sha256 = "{hashlib.sha256(other).hexdigest()}"}}]\n'
    )
    tdx = load_policy(policy).tdx
    assert tdx is not None and tdx.insecure


def test_gpu_roots(vectors: Path) -> None:
    d = vectors / "nvidia-gpu/nvtrust"
    device = (d / "verifier_device_root.pem").read_text()
    text = 'version = 1\nallowed_tees = ["nvidia-gpu"]\n[gpu]\ndevice_root = {pem = """%s"""}\n'
    gpu = parse_policy((text % device).encode()).gpu
    assert gpu is not None and gpu.device_root is None and not gpu.insecure  # NVIDIA's own
    lab = (vectors / "tdx/intel-qvl-sampledata/trustedRootCaCert.pem").read_text()
    gpu = parse_policy((text % lab).encode()).gpu
    assert gpu is not None and gpu.device_root is not None and gpu.insecure
    rim_as_device = parse_policy((text % (d / "verifier_RIM_root.pem").read_text()).encode()).gpu
    assert rim_as_device is not None and rim_as_device.insecure  # roots are not interchangeable


def test_test_root_from_policy_warns_when_used(vectors: Path) -> None:
    d = vectors / "tdx/intel-qvl-sampledata"
    pem = (d / "trustedRootCaCert.pem").read_text()
    text = f'version = 1\nallowed_tees = ["tdx"]\n[tdx]\nroots = [{{pem = """{pem}"""}}]\n'
    tdx = parse_policy(text.encode()).tdx
    assert tdx is not None
    with pytest.warns(InsecureModeWarning), pytest.raises(AttestationError):
        verify_tdx_quote(
            (d / "quote.dat").read_bytes(),
            TdxCollateral.from_dir(d),
            tdx,
            now=datetime(2025, 1, 1, tzinfo=UTC),
        )


MINIMAL = 'version = 1\nallowed_tees = ["sev-snp"]\n[snp]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL + "min_tcb = {bootloader = 1, tee = 0, snp = 256, microcode = 1}",
            "snp.min_tcb.snp must be an integer 0..255",
        ),
        (
            MINIMAL + "min_tcb = {bootloader = 1, tee = 0, snp = 1}",
            "snp.min_tcb.microcode is required",
        ),
        (
            MINIMAL + "min_tcb = {bootloader = 1, tee = 0, snp = true, microcode = 1}",
            "snp.min_tcb.snp must be an integer",
        ),
        (MINIMAL + "allowed_vmpls = [0, 4]", r"snp.allowed_vmpls\[1\] must be an integer 0..3"),
        (MINIMAL + "allowed_vmpls = []", "snp.allowed_vmpls must be a non-empty array"),
        (MINIMAL + 'allow_debug = "no"', "snp.allow_debug must be true or false"),
        (MINIMAL + "colour = 1", "snp.colour is not a known key"),
        (MINIMAL + 'roots = ["intel"]', r"snp.roots\[0\] must be \"amd\" or a table"),
        (MINIMAL + "roots = [{}]", r"snp.roots\[0\] must have exactly one of 'file' or 'pem'"),
        (MINIMAL + 'roots = [{pem = "nope"}]', r"snp.roots\[0\] does not hold a PEM certificate"),
        (
            MINIMAL + '[[release]]\nname = "a"\nsnp_measurements = ["abcd"]',
            r"release\[0\].snp_measurements\[0\] must be 48 bytes \(96 hex digits\), got 2",
        ),
        (
            MINIMAL + '[[release]]\nname = "a"\nsnp_measurements = ["zz"]',
            r"release\[0\].snp_measurements\[0\] must be a hex string",
        ),
        (MINIMAL + '[[release]]\nname = "a"', r"release\[0\] pins no measurement"),
        (
            MINIMAL + f'[[release]]\nname = "a"\nsnp_measurements = ["{"00" * 48}"]\n'
            f'[[release]]\nname = "a"\nsnp_measurements = ["{"00" * 48}"]',
            r"release\[1\].name repeats release 'a'",
        ),
        (
            MINIMAL + '[[release]]\nname = "a"\ntdx = {mrtd = "00"}',
            r"release\[0\].tdx.mrtd must be 48",
        ),
        ('version = 2\nallowed_tees = ["tdx"]\n[tdx]\n', "version must be 1"),
        ('allowed_tees = ["tdx"]\n[tdx]\n', "version is required"),
        ('version = 1\nallowed_tees = ["sgx"]\n', r"allowed_tees\[0\] must be one of"),
        ("version = 1\nallowed_tees = []\n", "allowed_tees must be a non-empty array"),
        ('version = 1\nallowed_tees = ["tdx"]\n', "tdx is required because allowed_tees has 'tdx'"),
        ('version = 1\nallowed_tees = ["tdx"]\n[tdx]\n[snp]\n', "snp is given but allowed_tees"),
        (
            'version = 1\nallowed_tees = ["tdx"]\n[tdx]\naccepted_tcb_statuses = ["Fine"]',
            r"tdx.accepted_tcb_statuses\[0\] must be one of UpToDate",
        ),
        (
            'version = 1\nallowed_tees = ["tdx"]\n[tdx]\nmax_collateral_age_seconds = 0',
            "tdx.max_collateral_age_seconds must be an integer 1..",
        ),
        (
            'version = 1\nallowed_tees = ["nvidia-gpu"]\n[gpu]\nrim_dir = "/nonexistent/rims"',
            "gpu.rim_dir is not a folder",
        ),
        (
            'version = 1\nallowed_tees = ["nvidia-gpu"]\n[gpu]\ndevice_root = "amd"',
            'gpu.device_root must be "nvidia" or a table',
        ),
        ("version = 1\nallowed_tees = [", "is not valid TOML"),
        ("version = 1\nextra = 3\nallowed_tees = ['tdx']\n[tdx]\n", "extra is not a known key"),
    ],
)
def test_invalid_policies_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse_policy(text.encode(), source="policy.toml")
    assert str(err.value).startswith("policy.toml: ")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_policy_parser_raises_only_config_error(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_policy(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_policy_raises_only_config_error(data: st.DataObject) -> None:
    text = FULL
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text) - 1))
        text = (
            text[:i]
            + data.draw(st.sampled_from(['"', "]", "=", "1", "x", "\n", "", "-1"]))
            + text[i + 1 :]
        )
    with contextlib.suppress(ConfigError):
        parse_policy(text.encode())


# -- signatures ------------------------------------------------------------------------------


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, ed25519.Ed25519PrivateKey]:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "POLICY.toml"
    path.write_text(FULL)
    signature_path(path).write_bytes(sign_policy(path.read_bytes(), key))
    return path, key


def test_signed_policy_loads_under_the_pinned_key(
    signed: tuple[Path, ed25519.Ed25519PrivateKey],
) -> None:
    path, key = signed
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    p = load_signed_policy(path, [other, key.public_key()])
    assert p.signed_by is not None and len(p.signed_by) == 64
    assert signature_path(path).name == "POLICY.toml.sig"


def _bad_signature(path: Path, keys: list[ed25519.Ed25519PublicKey]) -> AttestationError:
    with pytest.raises(AttestationError) as err:
        load_signed_policy(path, keys)
    return err.value


def test_tampered_policy_is_rejected(signed: tuple[Path, ed25519.Ed25519PrivateKey]) -> None:
    path, key = signed
    path.write_text(FULL.replace("allowed_vmpls = [0]", "allowed_vmpls = [0, 1, 2, 3]"))
    assert _bad_signature(path, [key.public_key()]).reason is AttestationFailure.BAD_SIGNATURE


def test_wrong_key_is_rejected(signed: tuple[Path, ed25519.Ed25519PrivateKey]) -> None:
    path, _ = signed
    other = ed25519.Ed25519PrivateKey.generate().public_key()
    assert _bad_signature(path, [other]).reason is AttestationFailure.BAD_SIGNATURE


def test_signature_is_checked_before_parsing(
    signed: tuple[Path, ed25519.Ed25519PrivateKey],
) -> None:
    path, key = signed
    path.write_text("not [ toml")  # a parse error would be a ConfigError: the signature comes first
    assert _bad_signature(path, [key.public_key()]).reason is AttestationFailure.BAD_SIGNATURE


def test_malformed_or_missing_signature(signed: tuple[Path, ed25519.Ed25519PrivateKey]) -> None:
    path, key = signed
    signature_path(path).write_text("not base64 !!")
    assert _bad_signature(path, [key.public_key()]).reason is AttestationFailure.MALFORMED
    signature_path(path).write_text("AAAA")
    assert _bad_signature(path, [key.public_key()]).reason is AttestationFailure.MALFORMED
    signature_path(path).unlink()
    with pytest.raises(ConfigError, match=r"signature POLICY\.toml\.sig cannot be read"):
        load_signed_policy(path, [key.public_key()])
    with pytest.raises(ConfigError, match="no trusted policy key"):
        signature_path(path).write_bytes(sign_policy(path.read_bytes(), key))
        load_signed_policy(path, [])


# -- veil policy -----------------------------------------------------------------------------


def policy_main(argv: list[str]) -> int:
    return main(["policy", *argv])


def test_policy_command_keygen_sign_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "op.key"
    assert policy_main(["keygen", "--out", str(key)]) == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    pub = tmp_path / "op.key.pub"
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert policy_main(["keygen", "--out", str(key)]) == 2  # never overwrites a key
    policy = tmp_path / "POLICY.toml"
    policy.write_text(FULL)
    assert policy_main(["sign", str(policy), "--key", str(key)]) == 0
    capsys.readouterr()
    assert policy_main(["check", str(policy), "--key", str(pub), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is True and doc["allowed_tees"] == ["nvidia-gpu", "sev-snp", "tdx"]
    assert doc["snp"]["min_tcb"] == "bl=1 tee=0 snp=2 ucode=71" and doc["signed_by"]
    assert [r["name"] for r in doc["releases"]] == ["2026.01", "2026.02"]
    policy.write_text(FULL + "\n# edited after signing\n")
    assert policy_main(["check", str(policy), "--key", str(pub), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and doc["error"]["reason"] == "bad_signature"
    assert policy_main(["check", str(policy)]) == 0  # unsigned check: valid, but warns
    assert "signature not checked" in capsys.readouterr().err


def test_policy_command_refuses_invalid_and_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "op.key"
    assert policy_main(["keygen", "--out", str(key)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "allowed_vmpls = [7]\n")
    assert policy_main(["sign", str(bad), "--key", str(key)]) == 1
    assert not signature_path(bad).exists()  # an invalid policy is never signed
    assert "snp.allowed_vmpls[0] must be an integer 0..3" in capsys.readouterr().err
    assert policy_main(["check", str(bad), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["kind"] == "ConfigError"
    assert policy_main(["check", str(tmp_path / "absent.toml")]) == 2
    assert policy_main(["sign", str(bad), "--key", str(tmp_path / "op.key.pub")]) == 2
    assert policy_main(["frobnicate"]) == 2
