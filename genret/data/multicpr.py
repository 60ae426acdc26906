"""Multi-CPR: header-less ``corpus.tsv``, ``{train,dev}.query.txt``, ``qrels.{train,dev}.tsv``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .dataset import Dataset, DataError
from .files import _grade, _Labels, _need_file, _nonempty, _read_text, _used


def _read_plain_tsv(path: Path, ncols: int, fix: str,
                    encoding: str | None) -> list[tuple[int, list[str]]]:
    """Header-less tab-separated rows, as (line number, fields); the last field keeps
    any further tabs. The first field (an id) must be non-empty."""
    _need_file(path, fix)
    rows = []
    for i, line in enumerate(_read_text(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", ncols - 1)
        if len(parts) < ncols:
            raise DataError(f"{path}: line {i} has {len(parts)} tab-separated fields, "
                            f"expected {ncols}; fix or remove the line")
        if not parts[0].strip():
            raise DataError(f"{path}: line {i} has an empty id in the first field")
        rows.append((i, parts))
    return rows


def load_multicpr(path: str | os.PathLike, threshold: float | None = None,
                  encoding: str | None = None) -> Dataset:
    """Multi-CPR: ``corpus.tsv`` (pid, passage), ``train.query.txt`` / ``dev.query.txt``
    (qid, query), ``qrels.train.tsv`` / ``qrels.dev.tsv`` (qid, 0, pid, 1); no headers.
    Query ids are prefixed with their part (``train-…``, ``dev-…``). Train queries
    stay train; the published dev queries are halved into dev and test by the sha1 rule
    (h even -> dev, odd -> test) since Multi-CPR publishes no test labels. Default
    threshold 1."""
    d = Path(path)
    fix = "the Multi-CPR layout needs corpus.tsv, {train,dev}.query.txt and qrels.{train,dev}.tsv"
    catalog: dict[str, str] = {}
    first: dict[str, int] = {}
    for i, (pid, text) in _read_plain_tsv(d / "corpus.tsv", 2, fix, encoding):
        pid = pid.strip()
        if pid in catalog:
            raise DataError(f"{d / 'corpus.tsv'}: line {i} repeats pid {pid!r} (first on line "
                            f"{first[pid]}); ids must be unique")
        catalog[pid], first[pid] = text, i
    queries: dict[str, str] = {}
    split: dict[str, str] = {}
    labels = _Labels(catalog, queries, str(d / "corpus.tsv"), "")
    for part in ("train", "dev"):
        qfile = d / f"{part}.query.txt"
        if not qfile.exists():
            continue
        first = {}
        for i, (qid, text) in _read_plain_tsv(qfile, 2, fix, encoding):
            _nonempty(text, f"{qfile}: line {i}", "query")
            qid = f"{part}-{qid.strip()}"
            if qid in queries:
                raise DataError(f"{qfile}: line {i} repeats qid {qid[len(part) + 1:]!r} (first "
                                f"on line {first[qid]}); ids must be unique")
            queries[qid], first[qid] = text, i
            h = int(hashlib.sha1(text.strip().lower().encode("utf-8")).hexdigest(), 16)
            split[qid] = "train" if part == "train" else ("dev" if h % 2 == 0 else "test")
        labels.queries_src = str(qfile)
        rfile = d / f"qrels.{part}.tsv"
        for i, (qid, _, pid, grade) in _read_plain_tsv(rfile, 4, fix, encoding):
            where = f"{rfile}: line {i}"
            labels.add(f"{part}-{qid.strip()}", pid.strip(), _grade(grade.strip(), where), where)
    if not queries:
        raise DataError(f"{d}: neither train.query.txt nor dev.query.txt found; {fix}")
    return Dataset(d.name, catalog, queries, labels.qrels, 1.0 if threshold is None else threshold,
                   split, encoding=_used(encoding))
