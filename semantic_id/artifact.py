"""Artifact directories: ``manifest.json`` plus ``.npy``/``.json`` files, saved atomically."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np


class SemanticIDError(ValueError):
    """Bad input or an unusable artifact; the message says what is wrong and how to fix it."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, version: int, **info):
    """Yield a temp directory to fill; on success write the manifest (with the size and
    sha256 of every file) and rename it to ``path``, replacing what was there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        files = {f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                 for f in sorted(tmp.rglob("*")) if f.is_file()}
        manifest = {"kind": kind, "format_version": version, **info, "files": files}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            old.rmdir()
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(path: str | os.PathLike, kind: str, version: int) -> dict:
    """Read ``path/manifest.json``; check kind, version, and every file's size and sha256."""
    path = Path(path)
    mf = path / "manifest.json"
    if not mf.is_file():
        raise SemanticIDError(f"{path}: no manifest.json; not a {kind} artifact or an interrupted "
                              "save; rebuild it")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError:
        raise SemanticIDError(f"{mf}: corrupt JSON; rebuild the artifact") from None
    if manifest.get("kind") != kind:
        raise SemanticIDError(f"{path}: holds a {manifest.get('kind')!r} artifact, not {kind!r}; "
                              "point to the right directory")
    if manifest.get("format_version") != version:
        raise SemanticIDError(f"{path}: format version {manifest.get('format_version')}, but this "
                              f"semantic_id reads version {version}; rebuild it with this version")
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not f.is_file():
            raise SemanticIDError(f"{f}: missing; the artifact is incomplete, rebuild it")
        if f.stat().st_size != meta["bytes"]:
            raise SemanticIDError(f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']} "
                                  "(truncated or modified); rebuild it")
        if sha256_file(f) != meta["sha256"]:
            raise SemanticIDError(f"{f}: checksum mismatch (corrupt or modified); rebuild it")
    return manifest


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickle, turning a damaged file into a clear error."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise SemanticIDError(f"{path}: unreadable ({e}); rebuild the artifact") from None
