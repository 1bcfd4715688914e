"""TDX quote parsing and collateral loading against real Intel DCAP quotes (tests/vectors)."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest

from veil.sdk.attestation.tdx import TdxCollateral, TdxQuote
from veil.sdk.errors import AttestationError, AttestationFailure

PRODUCTION_QUOTES = [
    "go-tdx-guest/cos-113-tdx-quote.dat",
    "go-tdx-guest/quote_v5_sample.dat",
    "go-tdx-guest/tdx_prod_quote_SPR_E4.dat",
    "teekit/tdx-v4-azure.b64",
    "teekit/tdx-v4-edgeless.dat",
    "teekit/tdx-v4-gcp.json",
    "teekit/tdx-v4-moemahhouk.dat",
    "teekit/tdx-v4-phala.dat",
    "teekit/tdx-v4-trustee.dat",
    "teekit/tdx-v4-zkdcap.dat",
    "teekit/tdx-v5-trustee.dat",
]


def load_quote_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix == ".b64":
        return base64.b64decode(raw)
    if path.suffix == ".json":
        return base64.b64decode(json.loads(raw)["tdx"]["quote"])
    return raw


@pytest.mark.parametrize("name", PRODUCTION_QUOTES)
def test_parses_every_production_quote(vectors: Path, name: str) -> None:
    q = TdxQuote.from_bytes(load_quote_bytes(vectors / "tdx" / name))
    assert q.version in (4, 5)
    assert q.tee_type == 0x81
    assert len(q.body.mr_td) == 48 and len(q.body.report_data) == 64
    assert len(q.signature.pck_chain) == 3
    assert q.signature.qe_report.raw in q.raw


def test_v5_sample_fields(vectors: Path) -> None:
    q = TdxQuote.from_bytes((vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes())
    assert q.version == 5
    # v5 signs the header, the 6-byte body descriptor and the body.
    body_size = 648 if q.body.mr_service_td is not None else 584
    assert q.signed_bytes == q.raw[: 48 + 6 + body_size]
    assert q.body.tee_tcb_svn.hex().startswith("0b0104")


@pytest.mark.parametrize("name", ["go-tdx-guest/quote_v5_sample.dat", "teekit/tdx-v5-trustee.dat"])
def test_v5_td15_body_has_extra_fields(vectors: Path, name: str) -> None:
    raw = (vectors / "tdx" / name).read_bytes()
    assert struct.unpack_from("<HI", raw, 48) == (3, 648)  # TD 1.5 body
    q = TdxQuote.from_bytes(raw)
    assert q.body.mr_service_td == raw[54 + 600 : 54 + 648]
    assert q.body.tee_tcb_svn_2 == raw[54 + 584 : 54 + 600]


def test_v5_with_td10_body(vectors: Path) -> None:
    v4 = (vectors / "tdx/teekit/tdx-v4-edgeless.dat").read_bytes()
    header = struct.pack("<H", 5) + v4[2:48]
    raw = header + struct.pack("<HI", 2, 584) + v4[48:]
    q = TdxQuote.from_bytes(raw)
    assert q.version == 5 and q.body.mr_service_td is None
    assert q.body == TdxQuote.from_bytes(v4).body
    assert q.signed_bytes == raw[: 48 + 6 + 584]


def test_qvl_sample_with_der_chain_in_root_first_order(vectors: Path) -> None:
    q = TdxQuote.from_bytes((vectors / "tdx/intel-qvl-sampledata/quote.dat").read_bytes())
    names = [c.subject.rfc4514_string() for c in q.signature.pck_chain]
    assert "CN=Intel SGX Root CA" in names[0] and "PCK Certificate" in names[-1]


def test_truncated_quote_is_precise(vectors: Path) -> None:
    raw = (vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes()
    with pytest.raises(AttestationError) as err:
        TdxQuote.from_bytes(raw[:600])
    assert err.value.reason is AttestationFailure.MALFORMED
    assert "quote is 600 bytes" in str(err.value)


def test_signature_length_beyond_end_is_precise(vectors: Path) -> None:
    raw = bytearray((vectors / "tdx/teekit/tdx-v4-edgeless.dat").read_bytes())
    struct.pack_into("<I", raw, 632, 0xFFFF)
    with pytest.raises(AttestationError, match="header says signature data of 65535 bytes"):
        TdxQuote.from_bytes(bytes(raw))


@pytest.mark.parametrize(
    ("offset", "value", "needle"),
    [(0, 3, "quote version is 3"), (2, 3, "attestation key type is 3"), (4, 0, "TEE type is 0x0")],
)
def test_bad_header_fields(vectors: Path, offset: int, value: int, needle: str) -> None:
    raw = bytearray((vectors / "tdx/teekit/tdx-v4-edgeless.dat").read_bytes())
    raw[offset] = value
    if offset == 4:
        raw[4:8] = b"\0\0\0\0"
    with pytest.raises(AttestationError, match=needle):
        TdxQuote.from_bytes(bytes(raw))


def test_bad_v5_body_size(vectors: Path) -> None:
    raw = bytearray((vectors / "tdx/go-tdx-guest/quote_v5_sample.dat").read_bytes())
    struct.pack_into("<I", raw, 50, 100)
    with pytest.raises(AttestationError, match="header says 100"):
        TdxQuote.from_bytes(bytes(raw))


def test_collateral_recognised_by_content(vectors: Path, tmp_path: Path) -> None:
    src = vectors / "tdx/tinfoil-collateral"
    # Rename every file to something meaningless: recognition must not depend on names.
    for i, p in enumerate(sorted(src.iterdir())):
        (tmp_path / f"blob{i}").write_bytes(p.read_bytes())
    c = TdxCollateral.from_dir(tmp_path)
    assert sorted(t.fmspc.hex() for t in c.tcb_infos) == ["00a06d080000", "90c06f000000"]
    assert len(c.qe_identities) == 1
    assert len(c.crls) == 3  # root CA CRL, platform CRL, processor CRL
    subjects = {x.subject.rfc4514_string() for x in c.certificates}
    assert any("TCB Signing" in s for s in subjects)
    assert any("Root CA" in s for s in subjects)


@pytest.mark.parametrize("folder", ["go-tdx-guest", "teekit", "intel-qvl-sampledata"])
def test_collateral_folders_load(vectors: Path, folder: str) -> None:
    c = TdxCollateral.from_dir(vectors / "tdx" / folder)
    assert c.tcb_infos, folder
    # Quotes and other files in the folder are listed, not silently misread.
    assert all(not n.endswith(".pem") for n in c.ignored)


def test_collateral_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(AttestationError, match="does not exist"):
        TdxCollateral.from_dir(tmp_path / "nope")


def test_pretty_printed_tcb_info_keeps_compact_fallback(vectors: Path) -> None:
    raw = (vectors / "tdx/tinfoil-collateral/tcb_info_90c06f000000.json").read_bytes()
    doc = json.loads(raw)
    pretty = json.dumps(doc, indent=4).encode()
    c = TdxCollateral.from_files([("pretty", pretty), ("compact", raw)])
    exact = c.tcb_infos[1].signed.signed_candidates[0]
    assert c.tcb_infos[0].signed.signed_candidates[-1] == exact
