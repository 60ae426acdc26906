"""Artifact directories: ``manifest.json`` plus ``.npy``/``.json`` files, saved atomically.

The one save/load policy of genret and semantic_id (genret.artifact reuses this module):

- a save writes only into a path that is absent, an empty directory or an artifact of the
  same kind (another kind only with ``overwrite=True``), never into a user's folder
  (:func:`check_output_dir`);
- it fills a temp sibling ``.<name>.genret-tmp-*`` while holding ``.<name>.genret-lock``
  (a second saver of the path gets a clear error), then renames it into place; temp
  siblings a killed save left behind are removed by the next save of that path;
- a load checks the manifest's own checksum, every file's size and, by default, its sha256.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
TMP_TAG, OLD_TAG, LOCK_TAG = "genret-tmp-", "genret-old-", "genret-lock"


class SemanticIDError(ValueError):
    """Bad input or an unusable artifact; the message says what is wrong and how to fix it."""


class ArtifactError(SemanticIDError):
    """An artifact directory, or a save path, that cannot be used as asked; the message says
    why and what to do."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest_checksum(manifest: dict) -> str:
    """sha256 of the manifest's content (key order and whitespace aside), its own checksum left out."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def artifact_kind(path: str | os.PathLike) -> str | None:
    """The kind recorded in ``path/manifest.json``, or None when it holds no artifact manifest."""
    try:
        m = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(m, dict) and isinstance(m.get("kind"), str) and "format_version" in m
    return m["kind"] if ok else None


def check_output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False) -> Path:
    """Refuse a save path that is not absent, an empty directory or a ``kind`` artifact (an
    artifact of another kind only with ``overwrite``). Call it before long work to fail fast."""
    path = Path(path)
    if not path.exists():
        return path
    if not path.is_dir():
        raise ArtifactError(f"{path} is a file, not a directory; choose another --out")
    if not any(path.iterdir()):
        return path
    found = artifact_kind(path)
    if found is None:
        raise ArtifactError(f"{path} is a non-empty folder that is not a genret {kind} artifact; "
                            "choose another --out or empty it")
    if found != kind and not overwrite:
        raise ArtifactError(f"{path} holds a genret {found} artifact, not {kind}; pass --overwrite "
                            "(overwrite=True) to replace it, or choose another --out")
    return path


@contextlib.contextmanager
def path_lock(path: str | os.PathLike, doing: str = "saving"):
    """Hold an exclusive lock (``flock`` on the sibling ``.<name>.genret-lock``) for ``path``;
    while it is held, another holder gets "another process is <doing> PATH; wait for it"."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.{LOCK_TAG}")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ArtifactError(f"cannot write beside {path} ({e.strerror}); choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ArtifactError(f"another process is {doing} {path}; wait for it to finish") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
    try:
        yield
    finally:
        os.unlink(lock)
        os.close(fd)


def _remove_leftovers(path: Path) -> None:
    """Delete the temp siblings of ``path`` that a killed save left (call with the lock held)."""
    for tag in (TMP_TAG, OLD_TAG):
        for left in path.parent.glob(f".{glob.escape(path.name)}.{tag}*"):
            shutil.rmtree(left, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, kind: str, version: int, overwrite: bool = False, **info):
    """Yield a temp directory to fill; on success write the manifest (size and sha256 of every
    file, and its own checksum) and rename the directory to ``path``.

    ``path`` must pass :func:`check_output_dir` (on entry, before the caller fills the temp
    dir, and again before the swap). On error nothing is left behind and ``path`` is unchanged.
    """
    path = Path(path)
    check_output_dir(path, kind, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path_lock(path):
        _remove_leftovers(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{TMP_TAG}", dir=path.parent))
        try:
            yield tmp
            files = {f.relative_to(tmp).as_posix(): {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
                     for f in sorted(tmp.rglob("*")) if f.is_file()}
            manifest = json.loads(json.dumps({"kind": kind, "format_version": version, **info,
                                              "files": files}, default=str))
            manifest["manifest_sha256"] = manifest_checksum(manifest)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            check_output_dir(path, kind, overwrite)
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{OLD_TAG}", dir=path.parent))
                old.rmdir()
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError):
                raise ArtifactError(f"saving {path} failed ({e}); nothing was changed there") from None
            raise


def read_manifest(path: str | os.PathLike, kind: str | None = None, version: int | None = None,
                  verify: bool = True, rebuild: str = "rebuild it", **expect) -> dict:
    """Read and check ``path/manifest.json``.

    Checks the manifest's own checksum, the kind, the format version, every ``expect`` field
    (e.g. an encoder identity), that every listed file exists with its recorded size and,
    with ``verify`` (the default), its sha256. ``verify=False`` skips the hashing: for huge
    artifacts already checked once (sizes are still checked). Every error names the file
    and ends with ``rebuild`` (what to run to rebuild the artifact).
    """
    path = Path(path)
    mf = path / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST}; not a {kind or 'genret'} artifact, or an "
                            f"interrupted save; {rebuild}")
    try:
        manifest = json.loads(mf.read_text())
    except (OSError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise ArtifactError(f"{mf}: corrupt (not a JSON manifest); {rebuild}")
    if manifest.get("manifest_sha256", manifest_checksum(manifest)) != manifest_checksum(manifest):
        raise ArtifactError(f"{mf}: checksum mismatch (corrupt or edited); {rebuild}")
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(f"{path}: holds a {manifest.get('kind')!r} artifact, not {kind!r}; "
                            "point to the right directory")
    if version is not None and manifest.get("format_version") != version:
        raise ArtifactError(f"{path}: format version {manifest.get('format_version')}, but this "
                            f"version of the code reads version {version}; {rebuild}")
    for key, want in expect.items():
        if want is not None and manifest.get(key) != want:
            raise ArtifactError(f"{path}: built with {key} {manifest.get(key)!r}, but "
                                f"{want!r} was given; rebuild it with the same {key}")
    for name, meta in manifest.get("files", {}).items():
        f = path / name
        if not isinstance(meta, dict) or not {"bytes", "sha256"} <= meta.keys():
            raise ArtifactError(f"{mf}: corrupt entry for {name!r}; {rebuild}")
        if not f.is_file():
            raise ArtifactError(f"{f}: missing; the artifact is incomplete, {rebuild}")
        if f.stat().st_size != meta["bytes"]:
            raise ArtifactError(f"{f}: {f.stat().st_size} bytes, the manifest says {meta['bytes']} "
                                f"(truncated or modified); {rebuild}")
        if verify and sha256_file(f) != meta["sha256"]:
            raise ArtifactError(f"{f}: checksum mismatch (corrupt or modified); {rebuild}")
    return manifest


def load_npy(path: Path) -> np.ndarray:
    """``np.load`` without pickle, turning a damaged file into a clear error."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        first = (str(e).splitlines() or [""])[0]
        raise SemanticIDError(f"{path}: unreadable ({first}); rebuild the artifact") from None
