"""On-disk format: a directory with ``manifest.json`` and one ``.npy`` file per array."""

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np

KIND = "fm_index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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


def save_dir(path, arrays, meta):
    """Write atomically: build a temporary sibling directory, then rename it into place."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise FileExistsError(f"{path} exists and is not a directory; choose another path")
        if any(path.iterdir()) and not (path / MANIFEST).is_file():
            raise FileExistsError(
                f"{path} is a non-empty directory that is not a saved index; "
                "refusing to replace it, choose another path"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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
        manifest = {"kind": KIND, "format_version": FORMAT_VERSION, **meta, "arrays": entries}
        with open(tmp / MANIFEST, "w") as fh:
            json.dump(manifest, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.{uuid.uuid4().hex}.old"
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


def load_dir(path, names, mmap, tokenizer, verify):
    """Read and check a saved index; returns (arrays, manifest)."""
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
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        raise ValueError(f"{path} holds kind {kind!r}, not {KIND!r}; pass the directory of an FM index")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} uses FM-index format version {version!r}, but this fm_index reads version "
            f"{FORMAT_VERSION}; {rebuild}"
        )
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
        except (ValueError, OSError) as e:
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
