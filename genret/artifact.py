"""On-disk artifacts: a directory with ``manifest.json`` plus array files, saved atomically.

The manifest records the kind, the format version, free-form identity fields (tokenizer,
encoder, config) and the size and sha256 of every file, so a load can say exactly what
is wrong (another kind, an old version, a truncated file) and how to fix it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


class ArtifactError(ValueError):
    """An artifact directory that cannot be used as asked; the message says why and what to do."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, version: int, **info):
    """Yield a temporary directory to fill; on success write the manifest and move it to
    ``path`` (replacing an older artifact there). On error nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        files = {str(f.relative_to(tmp)): {"bytes": f.stat().st_size, "sha256": sha256(f)}
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        manifest = {"kind": kind, "format_version": version, **info, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: str | os.PathLike, kind: str | None = None, version: int | None = None,
                  verify: bool = False, **expect) -> dict:
    """Read and check ``path/manifest.json``.

    Checks the kind, the format version, every ``expect`` field (e.g. a tokenizer
    identity), that every listed file exists with its recorded size, and with ``verify``
    its sha256.
    """
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.exists():
        raise ArtifactError(f"{path}: no manifest.json — not a genret artifact, or an interrupted "
                            "save; rebuild it")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError:
        raise ArtifactError(f"{mf}: corrupt JSON; rebuild the artifact") from None
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{path}: holds a {manifest.get('kind')!r} artifact, not {kind!r}; "
                            "point to the right directory")
    if version is not None and manifest.get("format_version") != version:
        raise ArtifactError(f"{path}: format version {manifest.get('format_version')} but this "
                            f"genret reads version {version}; rebuild it with this version")
    for key, want in expect.items():
        if want is not None and manifest.get(key) != want:
            raise ArtifactError(f"{path}: built with {key} {manifest.get(key)!r}, but "
                                f"{want!r} was given; rebuild it with the same {key}")
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not f.exists():
            raise ArtifactError(f"{f}: missing; the artifact is incomplete, rebuild it")
        if f.stat().st_size != meta["bytes"]:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']} "
                                "(truncated or modified); rebuild it")
        if verify and sha256(f) != meta["sha256"]:
            raise ArtifactError(f"{f}: checksum mismatch (corrupt); rebuild it")
    return manifest


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
