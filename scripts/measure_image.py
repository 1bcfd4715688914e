"""Before deployment: the measurement an image's enclave will report, and its content digest.

    python scripts/measure_image.py measure ROOTFS --config config.toml
    python scripts/measure_image.py digest ROOTFS [--list]
    python scripts/measure_image.py diff ROOTFS_A ROOTFS_B

ROOTFS is an image's root file system, as a folder or as a tar (optionally gzipped), e.g.
`podman export $(podman create IMAGE) > rootfs.tar` (the same with docker).

`measure` prints what `veil serve` started from that image with that config.toml reports and
clients pin: Veil's measurement (veil.enclave._measurement) of the `veil` packages in the image's
site-packages and of the config, computed here by this checkout's code over the image's files,
without running anything from the image.

`digest` prints the image's content digest: SHA-256 over one line per entry, sorted by path:
`d MODE PATH` for a folder, `f MODE SHA256 PATH` for a file, `l TARGET PATH` for a symlink,
`o TYPE PATH` for anything else; hard links count as their target's content. Timestamps and
owners are left out (a reproducible build sets the first from SOURCE_DATE_EPOCH, and a folder
unpacked by a user who is not root loses the second), so two builds of the same sources and locks
have the same digest, and `diff` lists the entries in which two builds differ.
"""

from __future__ import annotations

import argparse
import hashlib
import stat
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from veil.enclave._config import ServerConfig
from veil.enclave._measurement import ENCLAVE_PACKAGES, measure
from veil.sdk.errors import ConfigError

DIGEST_TAG = "veil/rootfs-digest/v1"


@dataclass(frozen=True)
class Entry:
    """One path of a root file system, as the content digest sees it."""

    path: str
    kind: str  # d, f, l, o
    detail: str  # "MODE", "MODE SHA256", the link target, or the type

    def line(self) -> str:
        return f"{self.kind} {self.detail} {self.path}"


def _clean(name: str) -> str | None:
    parts = [p for p in PurePosixPath(name).parts if p not in {"/", "."}]
    if any(p == ".." for p in parts):
        raise ConfigError(f"rootfs entry {name!r} leaves the root")
    path = "/".join(parts)
    if "\n" in path:
        raise ConfigError(f"rootfs entry {name!r} has a newline in its name")
    return path or None


def _sha256_stream(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    while block := f.read(1 << 20):
        h.update(block)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return _sha256_stream(f)


def _dir_entries(root: Path) -> Iterator[Entry]:
    for path in root.rglob("*"):
        rel = _clean(path.relative_to(root).as_posix())
        if rel is None:
            continue
        info = path.lstat()
        mode = f"{stat.S_IMODE(info.st_mode):04o}"
        if stat.S_ISLNK(info.st_mode):
            yield Entry(rel, "l", str(path.readlink()))
        elif stat.S_ISDIR(info.st_mode):
            yield Entry(rel, "d", mode)
        elif stat.S_ISREG(info.st_mode):
            yield Entry(rel, "f", f"{mode} {_sha256_file(path)}")
        else:
            yield Entry(rel, "o", stat.filemode(info.st_mode)[0])


def _tar_entries(archive: Path) -> Iterator[Entry]:
    with tarfile.open(archive) as tar:
        members = {}
        for member in tar.getmembers():
            rel = _clean(member.name)
            if rel is not None:
                members[rel] = member  # a later member replaces an earlier one, as on extraction
        for rel, member in members.items():
            mode = f"{member.mode & 0o7777:04o}"
            if member.issym():
                yield Entry(rel, "l", member.linkname)
            elif member.isdir():
                yield Entry(rel, "d", mode)
            elif member.isfile() or member.islnk():
                source = member
                if member.islnk():
                    target = _clean(member.linkname)
                    source = members.get(target or "", member)
                    mode = f"{source.mode & 0o7777:04o}"
                f = tar.extractfile(source)
                if f is None:
                    raise ConfigError(f"{archive}: cannot read {rel}")
                yield Entry(rel, "f", f"{mode} {_sha256_stream(f)}")
            else:
                yield Entry(rel, "o", member.type.decode("ascii", "replace"))


def entries(rootfs: Path) -> list[Entry]:
    """Every entry of ``rootfs`` (a folder or a tar), sorted by path."""
    if rootfs.is_dir():
        found = list(_dir_entries(rootfs))
    elif rootfs.is_file() and tarfile.is_tarfile(rootfs):
        found = list(_tar_entries(rootfs))
    else:
        raise ConfigError(f"{rootfs} is neither a folder nor a tar archive")
    return sorted(found, key=lambda e: e.path)


def content_digest(listing: list[Entry]) -> str:
    h = hashlib.sha256(DIGEST_TAG.encode() + b"\0")
    for entry in listing:
        h.update(entry.line().encode() + b"\n")
    return h.hexdigest()


def _site_packages(paths: Iterable[str]) -> str:
    """The one site-packages folder (relative path) holding the enclave's packages."""
    marker = "site-packages/" + ENCLAVE_PACKAGES[0].replace(".", "/") + "/"
    padded = (p + "/" for p in paths)
    sites = sorted({p[: p.index(marker) + len("site-packages")] for p in padded if marker in p})
    if len(sites) != 1:
        raise ConfigError(
            f"expected one site-packages with {ENCLAVE_PACKAGES[0]} in the rootfs, found {sites}"
        )
    return sites[0]


def measure_rootfs(rootfs: Path, config: ServerConfig) -> bytes:
    """The measurement `veil serve` in this rootfs reports for ``config``."""
    if rootfs.is_dir():
        sites = (p.relative_to(rootfs).as_posix() for p in rootfs.rglob("site-packages"))
        candidates = [f"{s}/{ENCLAVE_PACKAGES[0].replace('.', '/')}" for s in sites]
        found = (c for c in candidates if (rootfs / c).is_dir())
        return measure(config, rootfs / _site_packages(found))
    with tarfile.open(rootfs) as tar, tempfile.TemporaryDirectory() as tmp:
        names = {_clean(m.name): m for m in tar.getmembers()}
        site_rel = _site_packages([n for n in names if n])
        prefix = f"{site_rel}/veil/"
        wanted = [m for n, m in names.items() if n and n.startswith(prefix) and m.isfile()]
        for member in wanted:
            rel = _clean(member.name)
            assert rel is not None
            out = Path(tmp, rel)
            out.parent.mkdir(parents=True, exist_ok=True)
            f = tar.extractfile(member)
            if f is None:
                raise ConfigError(f"{rootfs}: cannot read {rel}")
            out.write_bytes(f.read())
        for name in ENCLAVE_PACKAGES:  # a package with no measured file is still a folder
            Path(tmp, site_rel, *name.split(".")).mkdir(parents=True, exist_ok=True)
        return measure(config, Path(tmp, site_rel))


def load_config(path: Path) -> ServerConfig:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    return ServerConfig.from_dict(doc, data_dir=path.parent, source=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_measure = sub.add_parser("measure", help="the measurement clients pin (hex)")
    p_measure.add_argument("rootfs", type=Path)
    p_measure.add_argument("--config", type=Path, required=True, help="the config.toml deployed")
    p_digest = sub.add_parser("digest", help="the content digest of a root file system")
    p_digest.add_argument("rootfs", type=Path)
    p_digest.add_argument("--list", action="store_true", help="print every entry too")
    p_diff = sub.add_parser("diff", help="entries in which two root file systems differ")
    p_diff.add_argument("a", type=Path)
    p_diff.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "measure":
            print(measure_rootfs(args.rootfs, load_config(args.config)).hex())
        elif args.command == "digest":
            listing = entries(args.rootfs)
            if args.list:
                for entry in listing:
                    print(entry.line())
            print(f"sha256:{content_digest(listing)}")
        else:
            a = {e.line() for e in entries(args.a)}
            b = {e.line() for e in entries(args.b)}
            for line in sorted(a - b, key=lambda s: s.rsplit(" ", 1)[-1]):
                print(f"- {line}")
            for line in sorted(b - a, key=lambda s: s.rsplit(" ", 1)[-1]):
                print(f"+ {line}")
            return 0 if a == b else 1
    except ConfigError as exc:
        print(f"measure_image: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
