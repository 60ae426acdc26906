"""On-disk artifacts: a directory with ``manifest.json`` plus array files, saved atomically.

The manifest records the kind, the format version, free-form identity fields (tokenizer,
encoder, config) and the size and sha256 of every file, so a load can say exactly what
is wrong (another kind, an old version, a truncated or corrupt file) and how to fix it.
The policy (where a save may write, temp and lock siblings, verified loads) is
:mod:`semantic_id.artifact`'s, shared by every genret artifact; this module adds the genret
command that rebuilds each kind to the errors, and a guard for loaders.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from semantic_id.artifact import (ArtifactError, artifact_kind, atomic_dir, check_output_dir,  # noqa: F401
                                  manifest_checksum, path_lock)
from semantic_id.artifact import read_manifest as _read_manifest
from semantic_id.artifact import sha256_file as sha256  # noqa: F401

_TRAIN = "rebuild it with `genret train --mode {mode} ... --out {path}`"
REBUILD = {
    "bm25": "rebuild it with make_retriever('bm25').fit(dataset).save('{path}') "
            "(`genret compare` without --resume does it for its rows)",
    "gr-multispan": _TRAIN.replace("{mode}", "multispan"),
    "gr-sid": _TRAIN.replace("{mode}", "semantic-id --sid DIR"),
    "dense": _TRAIN.replace("{mode}", "dense"),
    "splade": _TRAIN.replace("{mode}", "splade"),
    "prosper": _TRAIN.replace("{mode}", "prosper"),
    "backbone": "rebuild it with `genret pretrain --out {path}`",
    "synth": "rebuild it with `genret synth ... --out {path}`",
    "semantic_id.ids": "rebuild it with `genret sid build ... --out {path}`",
    "fm_index": "rebuild it with FMIndex.build(...).save('{path}')",
}


def rebuild_hint(path: str | os.PathLike, kind: str | None) -> str:
    """What to run to rebuild a ``kind`` artifact at ``path`` (ends every load error)."""
    return REBUILD.get(kind, "rebuild it").format(path=path)


def read_manifest(path: str | os.PathLike, kind: str | None = None, version: int | None = None,
                  verify: bool = True, rebuild: str | None = None, **expect) -> dict:
    """:func:`semantic_id.artifact.read_manifest` (sizes always, sha256 unless ``verify=False``)
    whose errors end with ``rebuild``, by default the genret command that rebuilds ``kind``
    (or the kind the manifest names)."""
    rebuild = rebuild or rebuild_hint(path, kind or artifact_kind(path))
    return _read_manifest(path, kind, version, verify, rebuild, **expect)


@contextlib.contextmanager
def loading(path: str | os.PathLike, kind: str | None):
    """Turn any error but an ArtifactError (which says what to do already) that reading an
    artifact raises (OSError, SafetensorError, IndexError, UnicodeDecodeError, a numpy
    ValueError, ...) into a one-line ArtifactError naming ``path`` and its rebuild command."""
    try:
        yield
    except ArtifactError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ArtifactError(f"{path}: cannot be loaded ({type(e).__name__}: {first}); "
                            f"{rebuild_hint(path, kind)}") from None


def reads_artifact(load):
    """Decorate a retriever's ``_load(cls, path)`` with :func:`loading` for its kind."""
    @functools.wraps(load)
    def guarded(cls, path, *args, **kwargs):
        with loading(path, cls.kind):
            return load(cls, path, *args, **kwargs)
    return guarded


def dir_bytes(path: str | os.PathLike) -> int:
    """Total size of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
