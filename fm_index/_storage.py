"""On-disk format: a directory with ``manifest.json`` and one ``.npy`` file per array."""

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import tempfile
import tokenize
from pathlib import Path

import numpy as np

KIND = "fm_index"
FORMAT_VERSION = 2  # 2: packed document offsets, narrow alphabet and LF offsets; 1 is still read
MANIFEST = "manifest.json"
TMP_TAG, OLD_TAG, LOCK_TAG = "genret-tmp-", "genret-old-", "genret-lock"  # as semantic_id/genret saves


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_npy(path, arr):
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(arr), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _manifest_checksum(manifest):
    """sha256 of the manifest's content (key order and whitespace aside), its own checksum left out."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _check_output(path, overwrite):
    """Refuse a save path that is not absent, an empty directory or a saved index (another
    artifact kind only with ``overwrite``): never replace a user's folder."""
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory; choose another path")
    if not any(path.iterdir()):
        return
    try:
        found = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        found = None
    if not (isinstance(found, dict) and isinstance(found.get("kind"), str) and "format_version" in found):
        raise FileExistsError(f"{path} is a non-empty folder that is not a genret {KIND} artifact; "
                              "refusing to replace it, choose another path or empty it")
    if found["kind"] != KIND and not overwrite:
        raise FileExistsError(f"{path} holds a genret {found['kind']} artifact, not an FM index; pass "
                              "overwrite=True to replace it, or choose another path")


@contextlib.contextmanager
def _lock(path):
    """Exclusive ``flock`` on the sibling ``.<name>.genret-lock`` (the lock genret's saves take)."""
    lock = path.with_name(f".{path.name}.{LOCK_TAG}")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BlockingIOError(f"another process is saving {path}; wait for it to finish") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)  # the previous holder removed the file as we opened it: lock the new one
    try:
        yield
    finally:
        os.unlink(lock)
        os.close(fd)


def save_dir(path, arrays, meta, overwrite=False):
    """Write atomically: fill a temp sibling ``.<name>.genret-tmp-*`` under a lock, then rename
    it into place. Temp siblings left by a killed save are removed first."""
    path = Path(path)
    _check_output(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(path):
        for tag in (TMP_TAG, OLD_TAG):
            for left in path.parent.glob(f".{glob.escape(path.name)}.{tag}*"):
                shutil.rmtree(left, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{TMP_TAG}", dir=path.parent))
        try:
            entries = {}
            for name, arr in arrays.items():
                fname = f"{name}.npy"
                _write_npy(tmp / fname, arr)
                entries[name] = {
                    "file": fname,
                    "dtype": np.dtype(arr.dtype).str,
                    "shape": list(arr.shape),
                    "sha256": _sha256(tmp / fname),
                }
            manifest = json.loads(json.dumps({"kind": KIND, "format_version": FORMAT_VERSION, **meta,
                                              "arrays": entries}))
            manifest["manifest_sha256"] = _manifest_checksum(manifest)
            with open(tmp / MANIFEST, "w") as fh:
                json.dump(manifest, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            _check_output(path, overwrite)
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.{OLD_TAG}", dir=path.parent))
                old.rmdir()
                os.replace(path, old)
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _npy_header(path):
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        return shape, fortran, dtype, fh.tell()


def load_dir(path, names_by_version, mmap, tokenizer, verify):
    """Read and check a saved index (``names_by_version``: format version -> array names);
    returns (arrays, manifest)."""
    path = Path(path)
    rebuild = "rebuild it with FMIndex.build(...) and save it again"
    if not path.is_dir():
        raise FileNotFoundError(f"no index directory at {path}; build one with FMIndex.build(...).save(path)")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise FileNotFoundError(
            f"{path} has no {MANIFEST}: it is not a saved index or its save did not finish; {rebuild}"
        )
    try:
        manifest = json.loads(mpath.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{mpath} is not valid JSON ({e}); the index is corrupt, {rebuild}") from None
    saved = manifest.get("manifest_sha256") if isinstance(manifest, dict) else None
    if saved is not None and saved != _manifest_checksum(manifest):  # older saves have none
        raise ValueError(f"{mpath} does not match its own checksum (corrupt or edited); {rebuild}")
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise ValueError(f"{path} holds kind {kind!r}, not {KIND!r}; pass the directory of an FM index")
    version = manifest.get("format_version")
    if version not in names_by_version or isinstance(version, bool):
        raise ValueError(
            f"{path} uses FM-index format version {version!r}, but this fm_index reads versions "
            f"{', '.join(map(str, sorted(names_by_version)))}; {rebuild}"
        )
    names = names_by_version[version]
    if tokenizer is not None and manifest.get("tokenizer") != tokenizer:
        raise ValueError(
            f"{path} was built with tokenizer {manifest.get('tokenizer')!r}, not {tokenizer!r}; "
            "load it with the tokenizer it was built with, or rebuild it for this one"
        )
    arrays = {}
    for name in names:
        try:
            entry = manifest["arrays"][name]
            fpath = path / entry["file"]
            want_shape = tuple(entry["shape"])
            want_dtype = np.dtype(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{mpath} lacks a valid entry for array {name!r}; {rebuild}") from None
        if not fpath.is_file():
            raise FileNotFoundError(f"{fpath} is missing; the index directory is incomplete, {rebuild}")
        try:
            shape, fortran, dtype, offset = _npy_header(fpath)
        except (ValueError, OSError, SyntaxError, tokenize.TokenError) as e:  # numpy parses the header
            raise ValueError(f"{fpath} is not a valid .npy file ({e}); {rebuild}") from None
        if shape != want_shape or dtype != want_dtype or fortran:
            raise ValueError(
                f"{fpath} holds {dtype} {shape}, but the manifest says {want_dtype} {want_shape}; {rebuild}"
            )
        size = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        actual = fpath.stat().st_size
        if actual != size:
            raise ValueError(f"{fpath} has {actual} bytes, expected {size} (truncated or corrupt); {rebuild}")
        if verify and _sha256(fpath) != entry.get("sha256"):
            raise ValueError(f"{fpath} does not match its sha256 in the manifest (corrupt); {rebuild}")
        arr = np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)
        arrays[name] = np.asarray(arr)
    return arrays, manifest
