"""NVIDIA's pinned roots, shipped as package data (never taken from an evidence chain)."""

from __future__ import annotations

import functools
from importlib import resources

from cryptography import x509

from veil.sdk.attestation.tdx._x509 import load_certificates

__all__ = ["nvidia_device_root", "nvidia_rim_root"]


@functools.cache
def _root(name: str) -> x509.Certificate:
    data = resources.files("veil.sdk.attestation.nvidia").joinpath(f"roots/{name}").read_bytes()
    return load_certificates(data, f"pinned {name}")[0]


def nvidia_device_root() -> x509.Certificate:
    """NVIDIA Device Identity CA: the root of GPU and NVSwitch device certificate chains."""
    return _root("verifier_device_root.pem")


def nvidia_rim_root() -> x509.Certificate:
    """NVIDIA CoRIM signing Root CA: the root of RIM signatures."""
    return _root("verifier_RIM_root.pem")
