"""Loading a dataset by what a path holds, and the default data path."""

from __future__ import annotations

import os
from pathlib import Path

from .beir import load_beir
from .dataset import Dataset, DataError
from .esci import load_esci
from .files import _LAYOUTS
from .homedepot import load_homedepot
from .multicpr import load_multicpr
from .tsv import load_tsv_dir
from .wands import load_wands


def default_data_path() -> Path | None:
    """``$GENRET_DATA``, else ``../shared/data/homedepot/train.csv.zip`` seen from the
    working directory or from the repository root; None when none exists."""
    env = os.environ.get("GENRET_DATA")
    if env:
        return Path(env)
    rel = Path("..") / "shared" / "data" / "homedepot" / "train.csv.zip"
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (base / rel).exists():
            return (base / rel).resolve()
    return None


def load_dataset(path: str | os.PathLike | None = None, threshold: float | None = None,
                 encoding: str | None = None) -> Dataset:
    """Load a dataset, choosing the format from what ``path`` holds.

    ``encoding`` of the text files; None: UTF-8, and for the Home Depot CSV latin-1 when
    it is no valid UTF-8 (the competition file is latin-1). The one used is
    ``dataset.encoding``.

    - a file (``*.csv`` / ``*.zip`` with Home Depot columns) -> :func:`load_homedepot`
    - a directory with ``products.tsv`` -> :func:`load_tsv_dir`
    - a directory with ``corpus.jsonl`` -> :func:`load_beir`
    - a directory with ``shopping_queries_dataset_examples.parquet`` -> :func:`load_esci`
    - a directory with ``label.csv`` -> :func:`load_wands`
    - a directory with ``corpus.tsv`` -> :func:`load_multicpr`
    - a directory with ``train.csv.zip`` or ``train.csv`` -> :func:`load_homedepot`
    """
    if path is None:
        path = default_data_path()
        if path is None:
            raise DataError("no dataset given: pass --data PATH or set GENRET_DATA (the Home "
                            "Depot file is ../shared/data/homedepot/train.csv.zip)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; pass --data PATH or set GENRET_DATA")
    if p.is_file():
        return load_homedepot(p, threshold, encoding)
    for marker, loader in (("products.tsv", load_tsv_dir), ("corpus.jsonl", load_beir),
                           ("shopping_queries_dataset_examples.parquet", load_esci),
                           ("label.csv", load_wands), ("corpus.tsv", load_multicpr)):
        if (p / marker).exists():
            return loader(p, threshold, encoding=encoding)
    for name in ("train.csv.zip", "train.csv"):
        if (p / name).is_file():
            return load_homedepot(p / name, threshold, encoding)
    raise DataError(f"{p}: not a known dataset layout; {_LAYOUTS}")
