"""Wayfair WANDS: tab-separated ``product.csv``, ``query.csv``, ``label.csv``."""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import DEFAULT_THRESHOLD, Dataset, DataError, _split_all
from .files import _Labels, _read_tsv, _unique, _used


WANDS_GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}


def load_wands(path: str | os.PathLike, threshold: float | None = None,
               encoding: str | None = None) -> Dataset:
    """Wayfair WANDS: tab-separated ``product.csv`` (product_id, product_name, ...),
    ``query.csv`` (query_id, query, ...), ``label.csv`` (id, query_id, product_id,
    label); Exact=2, Partial=1, Irrelevant=0 (default threshold 2: Exact). WANDS has no
    split: queries are split by the sha1 rule."""
    d = Path(path)
    fix = "the WANDS layout needs tab-separated product.csv, query.csv and label.csv"
    prows = _read_tsv(d / "product.csv", ["product_id", "product_name"], fix, encoding)
    qrows = _read_tsv(d / "query.csv", ["query_id", "query"], fix, encoding)
    lrows = _read_tsv(d / "label.csv", ["id", "query_id", "product_id", "label"], fix, encoding)
    catalog = _unique(prows, "product_id", "product_name", d / "product.csv")
    descriptions = {r["product_id"]: r.get("product_description") or "" for _, r in prows}
    queries = _unique(qrows, "query_id", "query", d / "query.csv", required=True)
    labels = _Labels(catalog, queries, str(d / "product.csv"), str(d / "query.csv"))
    for line, r in lrows:
        where = f"{d / 'label.csv'}: line {line}"
        lab = (r["label"] or "").strip()
        if lab not in WANDS_GRADES:
            raise DataError(f"{where}: label {r['label']!r}; expected Exact, Partial or Irrelevant")
        labels.add(r["query_id"], r["product_id"], WANDS_GRADES[lab], where)
    return Dataset("wands", catalog, queries, labels.qrels,
                   DEFAULT_THRESHOLD["wands"] if threshold is None else threshold,
                   _split_all(queries), descriptions, encoding=_used(encoding))
