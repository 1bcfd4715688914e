"""Pick the evidence source for ``veil serve --tee auto|sev-snp|tdx|simulated``.

Evidence: configfs-tsm (``/sys/kernel/config/tsm/report``) when present and its provider is the
one asked for; for SEV-SNP, ``/dev/sev-guest`` otherwise. ``auto`` takes real hardware when
either is present and usable, and falls back to the simulated TEE, saying so in ``reason``.
An explicit ``sev-snp`` / ``tdx`` without that hardware is a ``ConfigError``.

Sealing keys on real hardware never fall back silently to a file in the data directory:

* SEV-SNP with ``/dev/sev-guest``: MSG_KEY_REQ (a key derived by the AMD firmware from the VCEK
  root, bound to this guest's launch measurement and policy);
* otherwise (TDX, or SNP through configfs-tsm alone — Linux has no key derivation interface
  there): the operator must pass ``sealing_key_file`` (32 raw bytes or 64 hex digits, mode
  0600, e.g. provisioned by a key broker after attestation). Without it, selection refuses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from veil.enclave.tee._base import TeeProvider
from veil.enclave.tee._configfs import (
    CONFIGFS_TSM_REPORT,
    PROVIDER_TEE,
    ConfigfsTsm,
    TsmFilesystem,
)
from veil.enclave.tee._sev_guest import Ioctl, SevGuestDevice
from veil.sdk.errors import ConfigError

__all__ = ["ProviderSelection", "TeeKind", "load_sealing_key_file", "select_provider"]

TeeKind = Literal["auto", "sev-snp", "tdx", "simulated"]
SEV_GUEST_DEVICE = Path("dev/sev-guest")


@dataclass(frozen=True)
class ProviderSelection:
    """The chosen provider and, in words, why and where its sealing keys come from."""

    provider: TeeProvider
    tee: str
    source: str
    sealing: str
    reason: str

    @property
    def simulated(self) -> bool:
        return self.tee == "simulated"


def load_sealing_key_file(path: Path) -> Callable[[bytes], bytes]:
    """A sealing-key function over an operator-provided 32-byte key (raw or hex, mode 0600)."""
    try:
        info = path.stat()
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"sealing key file {path}: {exc.strerror}") from exc
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(
            f"sealing key file {path} is readable by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}): chmod 600 it"
        )
    key = data
    if len(data.strip()) == 64:
        try:
            key = bytes.fromhex(data.strip().decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            key = data
    if len(key) != 32:
        raise ConfigError(f"sealing key file {path} must hold 32 bytes (or 64 hex digits)")

    def derive(label: bytes) -> bytes:
        return hmac.new(key, b"veil/sealing/v1\0" + label, hashlib.sha256).digest()

    return derive


def _configfs_provider(root: Path, fs: TsmFilesystem | None) -> str | None:
    """The configfs-tsm provider's TEE ("sev-snp"/"tdx"), or None when absent or unusable."""
    report_dir = root / CONFIGFS_TSM_REPORT
    if not report_dir.is_dir():
        return None
    try:
        return PROVIDER_TEE[ConfigfsTsm.probe_provider(report_dir, fs)]
    except ConfigError:
        return None


def _sev_guest_present(root: Path) -> bool:
    device = root / SEV_GUEST_DEVICE
    return device.exists() and os.access(device, os.R_OK | os.W_OK)


def select_provider(
    kind: TeeKind,
    data_dir: Path,
    *,
    root: Path = Path("/"),
    sealing_key_file: Path | None = None,
    fs: TsmFilesystem | None = None,
    ioctl: Ioctl | None = None,
) -> ProviderSelection:
    """Choose the TEE provider for ``kind``; see the module docstring for the rules.

    ``root`` is where ``sys/kernel/config/tsm/report`` and ``dev/sev-guest`` are looked up
    (tests pass a fake tree); ``fs`` and ``ioctl`` replace the OS calls in tests.
    """
    if kind not in ("auto", "sev-snp", "tdx", "simulated"):
        raise ConfigError(f"--tee {kind!r}: expected auto, sev-snp, tdx or simulated")
    if kind == "simulated":
        return _simulated(data_dir, "--tee simulated")
    configfs = _configfs_provider(root, fs)
    sev_guest = _sev_guest_present(root)
    wanted = kind
    if kind == "auto":
        if configfs is not None:
            wanted = "sev-snp" if configfs == "sev-snp" else "tdx"
        elif sev_guest:
            wanted = "sev-snp"
        else:
            return _simulated(
                data_dir,
                f"--tee auto: no configfs-tsm at {root / CONFIGFS_TSM_REPORT} and no "
                f"{root / SEV_GUEST_DEVICE}: using the SIMULATED TEE (proves nothing)",
            )
    if wanted == "tdx":
        if configfs != "tdx":
            raise ConfigError(
                f"--tee tdx: no TDX guest here (configfs-tsm at {root / CONFIGFS_TSM_REPORT} "
                f"is {'absent or unusable' if configfs is None else 'provided by ' + configfs})"
            )
        if sealing_key_file is None:
            raise ConfigError(
                "--tee tdx: Linux offers TDX guests no sealing-key derivation; pass "
                "--sealing-key-file (32 bytes, mode 0600) for data at rest"
            )
        provider = ConfigfsTsm(
            root / CONFIGFS_TSM_REPORT, sealing_key=load_sealing_key_file(sealing_key_file), fs=fs
        )
        return ProviderSelection(
            provider=provider,
            tee="tdx",
            source="configfs-tsm",
            sealing=f"key file {sealing_key_file}",
            reason=f"--tee {kind}: TDX guest via configfs-tsm",
        )
    # SEV-SNP
    if configfs != "sev-snp" and not sev_guest:
        raise ConfigError(
            f"--tee sev-snp: no SEV-SNP guest here (no sev_guest provider in configfs-tsm at "
            f"{root / CONFIGFS_TSM_REPORT}, no usable {root / SEV_GUEST_DEVICE})"
        )
    device = (
        SevGuestDevice(root / SEV_GUEST_DEVICE, ioctl=ioctl)
        if ioctl is not None
        else SevGuestDevice(root / SEV_GUEST_DEVICE)
    )
    if sealing_key_file is not None:
        sealing: Callable[[bytes], bytes] = load_sealing_key_file(sealing_key_file)
        sealing_text = f"key file {sealing_key_file}"
    elif sev_guest:
        sealing = device.sealing_key
        sealing_text = "MSG_KEY_REQ via /dev/sev-guest (bound to measurement and guest policy)"
    else:
        raise ConfigError(
            "--tee sev-snp: configfs-tsm offers no sealing-key derivation and /dev/sev-guest "
            "is absent; pass --sealing-key-file (32 bytes, mode 0600) for data at rest"
        )
    if configfs == "sev-snp":
        provider_: TeeProvider = ConfigfsTsm(root / CONFIGFS_TSM_REPORT, sealing_key=sealing, fs=fs)
        source = "configfs-tsm"
    else:
        provider_ = device
        source = "/dev/sev-guest"
    return ProviderSelection(
        provider=provider_,
        tee="sev-snp",
        source=source,
        sealing=sealing_text,
        reason=f"--tee {kind}: SEV-SNP guest via {source}",
    )


def _simulated(data_dir: Path, reason: str) -> ProviderSelection:
    from veil.enclave.tee._simulated import SimulatedSnp

    return ProviderSelection(
        provider=SimulatedSnp.load_or_create(data_dir),
        tee="simulated",
        source="simulated",
        sealing=f"file {data_dir / 'simulated-tee' / 'sealing.key'} (simulated: no protection)",
        reason=reason,
    )
