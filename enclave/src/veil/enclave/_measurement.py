"""The enclave's measurement: SHA-384 over its code and its configuration, reproducibly.

A client pins this value (``veil measure --data-dir D`` prints it). It covers every source file of
the packages that run inside the enclave, in sorted order by path, and the canonical form of the
security-relevant configuration (tenants' key digests, limits, providers, TLS mode). Given a
``site`` folder (an image's site-packages, ``scripts/measure_image.py``), it measures the packages
there instead of this interpreter's, so the value can be computed before deployment.
"""

from __future__ import annotations

import hashlib
from importlib.util import find_spec
from pathlib import Path

from veil.enclave._config import ServerConfig
from veil.sdk.errors import ConfigError

__all__ = ["ENCLAVE_PACKAGES", "code_manifest", "measure"]

ENCLAVE_PACKAGES = ("veil.enclave", "veil.sdk", "veil.v1", "veil.privacy", "veil.watermark")
_SUFFIXES = {".py", ".pem", ".proto"}


def _package_root(name: str, site: Path | None) -> Path:
    if site is not None:
        root = site.joinpath(*name.split("."))
        if not root.is_dir():
            raise ConfigError(f"cannot measure: {root} is not a folder")
        return root
    spec = find_spec(name)  # locate without importing: measuring must not run the code
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"cannot measure: package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def code_manifest(site: Path | None = None) -> bytes:
    """``<sha256>  <package/path>`` per source file, sorted by path: what is measured."""
    lines = []
    for name in ENCLAVE_PACKAGES:
        root = _package_root(name, site)
        for path in sorted(root.rglob("*")):
            if path.suffix not in _SUFFIXES or "__pycache__" in path.parts or not path.is_file():
                continue
            rel = f"{name}/{path.relative_to(root).as_posix()}"
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {rel}")
    return ("\n".join(sorted(lines, key=lambda line: line[66:])) + "\n").encode()


def measure(config: ServerConfig, site: Path | None = None) -> bytes:
    """The 48-byte measurement for this code (or the code in ``site``) and ``config``."""
    h = hashlib.sha384()
    h.update(b"veil/measurement/v1\0")
    manifest = code_manifest(site)
    h.update(len(manifest).to_bytes(8, "big") + manifest)
    canonical = config.canonical()
    h.update(len(canonical).to_bytes(8, "big") + canonical)
    return h.digest()
