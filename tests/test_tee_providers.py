"""TEE evidence providers: configfs-tsm against a fake configfs tree, /dev/sev-guest ioctl
layouts against bytes written out from the kernel header, recorded GPU evidence, and
``select_provider`` / ``veil serve --tee``. None of this ran on real SNP/TDX hardware."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from veil.enclave.tee import (
    ConfigfsTsm,
    RecordedGpuEvidence,
    SevGuestDevice,
    SnpCertTable,
    TsmError,
    select_provider,
)
from veil.enclave.tee._configfs import (
    GUID_ARK,
    GUID_ASK,
    GUID_VCEK,
    OsTsmFilesystem,
    encode_cert_table,
)
from veil.enclave.tee._sev_guest import (
    SNP_GET_DERIVED_KEY,
    SNP_GET_EXT_REPORT,
    SNP_GET_REPORT,
    GuestRequest,
    pack_derived_key_req,
    pack_ext_report_req,
    unpack_derived_key_resp,
    unpack_report_resp,
)
from veil.enclave.tee._simulated import SimulatedSnp
from veil.sdk.attestation import AttestationPolicy, SnpCertChain, verify_snp_report
from veil.sdk.attestation._roots import load_certificates
from veil.sdk.attestation.nvidia import verify_spdm_signature
from veil.sdk.attestation.tdx import TcbStatus, TdxCollateral, TdxPolicy, verify_tdx_quote
from veil.sdk.errors import AttestationError, AttestationFailure, ConfigError

SNP_NOW = datetime(2026, 1, 15, tzinfo=UTC)
TDX_NOW = datetime(2026, 2, 5, tzinfo=UTC)
GPU_NOW = datetime(2025, 1, 1, tzinfo=UTC)
MEASUREMENT = bytes(range(48))


def _der(certs: list[x509.Certificate]) -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in certs]


# -- a fake configfs-tsm: a real folder, with the kernel's behaviour on mkdir / write / read ---


class FakeTsm(OsTsmFilesystem):
    """Behaves like configfs-tsm: entries fill themselves, writes bump ``generation``."""

    def __init__(
        self,
        provider: str,
        make: Callable[[bytes], tuple[bytes, bytes]],
        *,
        races: int = 0,
    ) -> None:
        self.provider = provider
        self.make = make
        self.races = races
        self.writes: list[tuple[str, bytes]] = []
        self.removed: list[str] = []

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)
        (path / "provider").write_text(self.provider + "\n")
        (path / "generation").write_text("0\n")

    def rmdir(self, path: Path) -> None:
        for child in path.iterdir():
            child.unlink()
        os.rmdir(path)
        self.removed.append(path.name)

    def write(self, path: Path, data: bytes) -> None:
        self.writes.append((path.name, data))
        path.write_bytes(data)
        gen = path.parent / "generation"
        gen.write_text(f"{int(gen.read_text()) + 1}\n")

    def read(self, path: Path) -> bytes:
        if path.name in ("outblob", "auxblob"):
            out, aux = self.make((path.parent / "inblob").read_bytes())
            if path.name == "auxblob" and self.races > 0:
                self.races -= 1  # another writer slips in between our two generation reads
                self.write(path.parent / "inblob", bytes(64))
            return out if path.name == "outblob" else aux
        return path.read_bytes()


def _tsm_root(tmp_path: Path) -> Path:
    report = tmp_path / "sys/kernel/config/tsm/report"
    report.mkdir(parents=True)
    return report


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory, tee_template: Path) -> SimulatedSnp:
    data = tmp_path_factory.mktemp("sim")
    os.symlink(tee_template, data / "simulated-tee")
    return SimulatedSnp.load_or_create(data)


def _sim_chain_table(sim: SimulatedSnp) -> bytes:
    vcek, ask, ark = (
        x509.load_der_x509_certificate(d) for d in sim.evidence(bytes(64), MEASUREMENT).cert_chain
    )
    der = _der([vcek, ask, ark])
    return encode_cert_table({GUID_VCEK: der[0], GUID_ASK: der[1], GUID_ARK: der[2]})


def test_configfs_snp_evidence_from_simulated_firmware_verifies(
    tmp_path: Path, simulated: SimulatedSnp
) -> None:
    table = _sim_chain_table(simulated)
    fs = FakeTsm(
        "sev_guest", lambda inblob: (simulated.evidence(inblob, MEASUREMENT).report, table)
    )
    report_dir = _tsm_root(tmp_path)
    tsm = ConfigfsTsm(report_dir, sealing_key=lambda label: b"k" * 32, fs=fs, privlevel=0)
    assert tsm.tee == "sev-snp" and tsm.name == "configfs-tsm/sev-snp"
    report_data = bytes(range(64))
    raw = tsm.evidence(report_data, b"ignored")
    assert raw.tee == "sev-snp" and len(raw.cert_chain) == 3
    chain = SnpCertChain.from_pem(*raw.cert_chain)
    policy = AttestationPolicy.simulated_for_tests(simulated.root_pem)
    with pytest.warns(Warning):
        verified = verify_snp_report(
            raw.report, chain, policy, now=datetime.now(UTC), expected_report_data=report_data
        )
    assert verified.report_data == report_data and verified.measurement == MEASUREMENT
    assert ("privlevel", b"0\n") in fs.writes and ("inblob", report_data) in fs.writes
    assert list(report_dir.iterdir()) == []  # every entry, probe included, was removed


def test_configfs_snp_real_report_and_cert_table_verify_under_amd_roots(
    tmp_path: Path, vectors: Path
) -> None:
    base = vectors / "sev-snp/routex-lua"
    report = (base / "report-turin.bin").read_bytes()
    certs = load_certificates((base / "vcek-chain-turin.pem").read_bytes())
    chain = SnpCertChain.from_certificates(certs)
    assert chain.ask is not None and chain.ark is not None
    der = _der([chain.vcek, chain.ask, chain.ark])
    # PEM entries are accepted too (some hosts install PEM in the table).
    table = encode_cert_table(
        {
            GUID_VCEK: der[0],
            GUID_ASK: chain.ask.public_bytes(serialization.Encoding.PEM),
            GUID_ARK: der[2],
        }
    )
    fs = FakeTsm("sev_guest", lambda _: (report, table))
    tsm = ConfigfsTsm(_tsm_root(tmp_path), sealing_key=lambda label: b"", fs=fs)
    raw = tsm.evidence(bytes(64), b"")
    assert raw.cert_chain == tuple(der)
    verified = verify_snp_report(
        raw.report,
        SnpCertChain.from_pem(*raw.cert_chain),
        AttestationPolicy.production(allow_any_measurement=True),
        now=SNP_NOW,
        expected_report_data=report[0x50:0x90],  # REPORT_DATA of the recorded report
    )
    assert verified.product.value == "Turin"


def test_configfs_tdx_quote_verifies_with_real_collateral(tmp_path: Path, vectors: Path) -> None:
    quote = (vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes()
    fs = FakeTsm("tdx_guest", lambda _: (quote, b""))
    tsm = ConfigfsTsm(_tsm_root(tmp_path), sealing_key=lambda label: b"", fs=fs)
    raw = tsm.evidence(bytes(64), b"")
    assert raw.tee == "tdx" and raw.cert_chain == () and raw.report == quote
    collateral = TdxCollateral.from_dir(vectors / "tdx/tinfoil-collateral")
    v = verify_tdx_quote(raw.report, collateral, TdxPolicy.production(), now=TDX_NOW)
    assert v.tcb_status is TcbStatus.UP_TO_DATE


def test_configfs_retries_when_generation_changes(tmp_path: Path, vectors: Path) -> None:
    quote = (vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes()
    table = encode_cert_table({})
    fs = FakeTsm("sev_guest", lambda _: (quote, table), races=2)
    tsm = ConfigfsTsm(_tsm_root(tmp_path), sealing_key=lambda label: b"", fs=fs)
    tsm.evidence(bytes(64), b"")
    assert sum(1 for name, _ in fs.writes if name == "inblob") == 3 + 2  # 3 tries, 2 intruders
    fs.races = 100
    with pytest.raises(TsmError, match="generation kept changing"):
        tsm.evidence(bytes(64), b"")


def test_configfs_refuses_unknown_provider_and_missing_tree(tmp_path: Path) -> None:
    fs = FakeTsm("arm_cca_guest", lambda _: (b"", b""))
    with pytest.raises(ConfigError, match="not supported"):
        ConfigfsTsm(_tsm_root(tmp_path), sealing_key=lambda label: b"", fs=fs)
    with pytest.raises(ConfigError, match="not usable"):
        ConfigfsTsm(tmp_path / "absent", sealing_key=lambda label: b"")


def test_configfs_empty_outblob_is_an_error(tmp_path: Path) -> None:
    fs = FakeTsm("tdx_guest", lambda _: (b"", b""))
    tsm = ConfigfsTsm(_tsm_root(tmp_path), sealing_key=lambda label: b"", fs=fs)
    with pytest.raises(TsmError, match="empty outblob"):
        tsm.evidence(bytes(64), b"")


# -- the SNP certificate table ---------------------------------------------------------------


def test_cert_table_layout_and_errors() -> None:
    table = encode_cert_table({GUID_VCEK: b"vcek", GUID_ARK: b"ark!"})
    # entry: GUID (RFC 4122 bytes) | offset u32 | length u32; 3 entries (incl. terminator) = 72
    assert table[:16] == bytes.fromhex("63da758de6644564adc5f4b93be8accd")
    assert struct.unpack_from("<II", table, 16) == (72, 4)
    assert table[48:72] == bytes(24) and table[72:] == b"vcekark!"
    parsed = SnpCertTable.from_bytes(table + bytes(100))  # the kernel pads to whole pages
    assert parsed.get(GUID_VCEK) == b"vcek" and parsed.get(GUID_ASK) is None
    with pytest.raises(TsmError, match="no terminator"):
        SnpCertTable.from_bytes(bytes(10))
    bad = bytearray(table)
    struct.pack_into("<I", bad, 20, 1000)
    with pytest.raises(TsmError, match="outside"):
        SnpCertTable.from_bytes(bytes(bad))


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_cert_table_parser_raises_only_tsm_error(data: bytes) -> None:
    with contextlib.suppress(TsmError):
        SnpCertTable.from_bytes(data).chain_der()


# -- /dev/sev-guest --------------------------------------------------------------------------


def test_ioctl_numbers_and_struct_layouts_match_the_kernel_header() -> None:
    # _IOWR('S', nr, struct snp_guest_request_ioctl) with sizeof == 32
    assert (SNP_GET_REPORT, SNP_GET_DERIVED_KEY, SNP_GET_EXT_REPORT) == (
        0xC0205300,
        0xC0205301,
        0xC0205302,
    )
    guest = GuestRequest(msg_version=1, req_data=0x1122334455667788, resp_data=0x99, exitinfo2=0)
    assert guest.pack().hex() == (
        "0100000000000000887766554433221199000000000000000000000000000000"
    )
    failed = GuestRequest.unpack(bytes(24) + struct.pack("<II", 0x16, 1))
    assert (failed.fw_error, failed.vmm_error) == (0x16, 1)
    ext = pack_ext_report_req(b"\xaa" * 64, 2, 0xDEADBEEF, 0x4000)
    assert len(ext) == 112
    assert ext == b"\xaa" * 64 + bytes.fromhex(
        "02000000" + "00" * 28 + "efbeadde00000000" + "00400000" + "00000000"
    )
    key = pack_derived_key_req(
        root_key_select=0, guest_field_select=0b1001, vmpl=1, guest_svn=7, tcb_version=0x1234
    )
    assert key.hex() == ("0000000000000000090000000000000001000000070000003412000000000000")


def test_response_unpacking() -> None:
    report = bytes(range(256)) * 4 + bytes(160)
    resp = struct.pack("<II", 0, 1184) + bytes(24) + report + bytes(4000 - 32 - 1184)
    assert unpack_report_resp(resp) == report
    with pytest.raises(TsmError, match="status 0x16"):
        unpack_report_resp(struct.pack("<II", 0x16, 1184) + bytes(3992))
    with pytest.raises(TsmError, match="report_size"):
        unpack_report_resp(struct.pack("<II", 0, 1000) + bytes(3992))
    assert unpack_derived_key_resp(bytes(32) + b"K" * 32) == b"K" * 32
    with pytest.raises(TsmError, match="MSG_KEY_REQ"):
        unpack_derived_key_resp(struct.pack("<I", 0x27) + bytes(60))


class FakeSevGuest:
    """Plays the kernel's side of the ioctls through the real pointers the device passes."""

    def __init__(self, sim: SimulatedSnp, table: bytes, *, key: bytes = b"D" * 32) -> None:
        self.sim = sim
        self.table = table
        self.key = key
        self.calls: list[tuple[int, int]] = []
        self.key_status = 0

    def __call__(self, fd: int, request: int, arg: bytearray) -> int:
        guest = GuestRequest.unpack(bytes(arg))
        if request == SNP_GET_EXT_REPORT:
            req = ctypes.string_at(guest.req_data, 112)
            user_data, vmpl = struct.unpack_from("<64sI", req)
            certs_address, certs_len = struct.unpack_from("<QI", req, 96)
            self.calls.append((request, certs_len))
            if certs_len < len(self.table):
                needed = len(self.table)  # the kernel reports the size it needs
                ctypes.memmove(guest.req_data + 104, struct.pack("<I", needed), 4)
                arg[24:32] = struct.pack("<II", 0, 1)  # vmm_error = INVALID_LEN
                raise OSError(errno.EIO, "Input/output error")
            report = self.sim.evidence(user_data, MEASUREMENT, vmpl=vmpl).report
            resp = struct.pack("<II", 0, 1184) + bytes(24) + report
            ctypes.memmove(guest.resp_data, resp, len(resp))
            ctypes.memmove(certs_address, self.table, len(self.table))
            return 0
        if request == SNP_GET_DERIVED_KEY:
            req = ctypes.string_at(guest.req_data, 32)
            self.calls.append((request, struct.unpack_from("<Q", req, 8)[0]))
            resp = struct.pack("<I", self.key_status) + bytes(28) + self.key
            ctypes.memmove(guest.resp_data, resp, 64)
            if self.key_status:
                arg[24:32] = struct.pack("<II", self.key_status, 0)
                raise OSError(errno.EIO, "Input/output error")
            return 0
        raise AssertionError(f"unexpected ioctl {request:#x}")


def _device(tmp_path: Path) -> Path:
    dev = tmp_path / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    (dev / "sev-guest").write_bytes(b"")
    return dev / "sev-guest"


def test_sev_guest_ext_report_grows_cert_buffer_and_verifies(
    tmp_path: Path, simulated: SimulatedSnp
) -> None:
    table = _sim_chain_table(simulated) + bytes(5 * 4096)  # bigger than the first 4 pages
    fake = FakeSevGuest(simulated, table)
    device = SevGuestDevice(_device(tmp_path), vmpl=0, ioctl=fake)
    report_data = os.urandom(64)
    raw = device.evidence(report_data, b"ignored")
    pages = -(-len(table) // 4096)
    assert [c[1] for c in fake.calls] == [4 * 4096, pages * 4096]  # retried, page-rounded
    policy = AttestationPolicy.simulated_for_tests(simulated.root_pem)
    with pytest.warns(Warning):
        v = verify_snp_report(
            raw.report,
            SnpCertChain.from_pem(*raw.cert_chain),
            policy,
            now=datetime.now(UTC),
            expected_report_data=report_data,
        )
    assert v.measurement == MEASUREMENT


def test_sev_guest_sealing_key_comes_from_msg_key_req(
    tmp_path: Path, simulated: SimulatedSnp
) -> None:
    fake = FakeSevGuest(simulated, b"")
    device = SevGuestDevice(_device(tmp_path), ioctl=fake)
    a, b = device.sealing_key(b"models/a"), device.sealing_key(b"models/b")
    assert len(a) == 32 and a != b and device.sealing_key(b"models/a") == a
    assert fake.calls[0] == (SNP_GET_DERIVED_KEY, 0b1001)  # bound to policy + measurement
    fake.key = b"E" * 32
    assert device.sealing_key(b"models/a") != a  # another guest key, another sealing key
    fake.key_status = 0x16
    with pytest.raises(TsmError, match="SNP_GET_DERIVED_KEY failed"):
        device.sealing_key(b"x")


# -- recorded GPU evidence -------------------------------------------------------------------


def test_recorded_gpu_evidence_answers_only_its_own_nonce(vectors: Path) -> None:
    d = vectors / "nvidia-gpu/nvtrust"
    source = RecordedGpuEvidence.from_files(
        d / "hopperAttestationReport.txt", d / "hopperCertChain.txt"
    )
    nonce = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
    got = source.evidence(nonce)
    assert (
        verify_spdm_signature(got.evidence, got.cert_chain_pem, now=GPU_NOW).evidence.nonce == nonce
    )
    with pytest.raises(AttestationError) as err:
        source.evidence(bytes(32))
    assert err.value.reason is AttestationFailure.STALE_NONCE
    ppcie = RecordedGpuEvidence.from_ppcie_json(d / "ppcie_gpu_evidence.json", 3)
    rec = ppcie.evidence(ppcie._recorded.nonce)
    assert verify_spdm_signature(rec.evidence, rec.cert_chain_pem, now=GPU_NOW)
    with pytest.raises(ConfigError):
        RecordedGpuEvidence.from_ppcie_json(d / "hopperCertChain.txt")


# -- selection -------------------------------------------------------------------------------


def _key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "sealing.key"
    path.write_text("ab" * 32)
    path.chmod(mode)
    return path


def test_auto_without_hardware_is_simulated_and_says_so(data_dir: Path, tmp_path: Path) -> None:
    sel = select_provider("auto", data_dir, root=tmp_path / "empty")
    assert sel.simulated and isinstance(sel.provider, SimulatedSnp)
    assert "SIMULATED" in sel.reason


@pytest.mark.parametrize("kind", ["sev-snp", "tdx"])
def test_explicit_hardware_absent_is_config_error(
    data_dir: Path, tmp_path: Path, kind: str
) -> None:
    with pytest.raises(ConfigError, match=f"--tee {kind}: no"):
        select_provider(kind, data_dir, root=tmp_path)  # type: ignore[arg-type]


def test_tdx_needs_an_explicit_private_sealing_key(
    data_dir: Path, tmp_path: Path, vectors: Path
) -> None:
    _tsm_root(tmp_path)
    fs = FakeTsm("tdx_guest", lambda _: (b"q", b""))
    with pytest.raises(ConfigError, match="--sealing-key-file"):
        select_provider("auto", data_dir, root=tmp_path, fs=fs)
    with pytest.raises(ConfigError, match="readable by others"):
        select_provider(
            "tdx", data_dir, root=tmp_path, fs=fs, sealing_key_file=_key_file(tmp_path, 0o644)
        )
    sel = select_provider(
        "tdx", data_dir, root=tmp_path, fs=fs, sealing_key_file=_key_file(tmp_path)
    )
    assert (
        sel.tee == "tdx" and sel.source == "configfs-tsm" and isinstance(sel.provider, ConfigfsTsm)
    )
    assert sel.provider.sealing_key(b"a") != sel.provider.sealing_key(b"b")
    with pytest.raises(ConfigError, match="no SEV-SNP guest here"):
        select_provider("sev-snp", data_dir, root=tmp_path, fs=fs)


def test_snp_prefers_configfs_evidence_and_msg_key_req_sealing(
    data_dir: Path, tmp_path: Path, simulated: SimulatedSnp
) -> None:
    _tsm_root(tmp_path)
    _device(tmp_path)
    fake = FakeSevGuest(simulated, b"")
    fs = FakeTsm("sev_guest", lambda _: (b"r", b""))
    sel = select_provider("auto", data_dir, root=tmp_path, fs=fs, ioctl=fake)
    assert (sel.tee, sel.source) == ("sev-snp", "configfs-tsm")
    assert "MSG_KEY_REQ" in sel.sealing
    sel.provider.sealing_key(b"label")
    assert fake.calls == [(SNP_GET_DERIVED_KEY, 0b1001)]


def test_snp_device_only_and_configfs_only(data_dir: Path, tmp_path: Path) -> None:
    dev_root = tmp_path / "a"
    _device(dev_root)
    sel = select_provider("sev-snp", data_dir, root=dev_root)
    assert sel.source == "/dev/sev-guest" and isinstance(sel.provider, SevGuestDevice)
    tsm_root = tmp_path / "b"
    _tsm_root(tsm_root)
    fs = FakeTsm("sev_guest", lambda _: (b"r", b""))
    with pytest.raises(ConfigError, match="no sealing-key derivation"):
        select_provider("sev-snp", data_dir, root=tsm_root, fs=fs)
    sel = select_provider(
        "sev-snp", data_dir, root=tsm_root, fs=fs, sealing_key_file=_key_file(tmp_path)
    )
    assert sel.source == "configfs-tsm" and "key file" in sel.sealing


def test_veil_serve_tee_tdx_refuses_without_hardware(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "veil.sdk.cli",
            "serve",
            "--data-dir",
            str(tmp_path),
            "--tee",
            "tdx",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--tee tdx: no TDX guest here" in result.stderr
