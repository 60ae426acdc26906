"""The plain TSV layout: ``products.tsv``, ``queries.tsv``, ``qrels.tsv``."""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import SPLITS, Dataset, DataError, _split_all
from .files import _grade, _Labels, _read_tsv, _unique, _used


def load_tsv_dir(path: str | os.PathLike, threshold: float | None = None,
                 encoding: str | None = None) -> Dataset:
    """``products.tsv`` (product_id, title[, description]), ``queries.tsv`` (query_id,
    query[, split][, frequency]), ``qrels.tsv`` (query_id, product_id, relevance).
    UTF-8 (or ``encoding``), tab-separated, one header line, no quoting. Default
    threshold 1."""
    d = Path(path)
    fix = "the TSV layout needs products.tsv, queries.tsv and qrels.tsv"
    prows = _read_tsv(d / "products.tsv", ["product_id", "title"], fix, encoding)
    qrows = _read_tsv(d / "queries.tsv", ["query_id", "query"], fix, encoding)
    rrows = _read_tsv(d / "qrels.tsv", ["query_id", "product_id", "relevance"], fix, encoding)
    catalog = _unique(prows, "product_id", "title", d / "products.tsv")
    descriptions = ({r["product_id"]: r.get("description") or "" for _, r in prows}
                    if prows and "description" in prows[0][1] else {})
    queries = _unique(qrows, "query_id", "query", d / "queries.tsv", required=True)
    if qrows and "split" in qrows[0][1]:
        split = {}
        for line, r in qrows:
            s = (r.get("split") or "").strip()
            if s not in SPLITS:
                raise DataError(f"{d / 'queries.tsv'}: line {line}: query {r['query_id']!r} has "
                                f"split {s!r}; use train, dev or test (or drop the split "
                                "column to use the sha1 rule)")
            split[r["query_id"]] = s
    else:
        split = _split_all(queries)
    freq = None
    if qrows and "frequency" in qrows[0][1]:
        freq = {r["query_id"]: _grade(r.get("frequency") or 0, f"{d / 'queries.tsv'}: line {line}",
                                      "frequency") for line, r in qrows}
    labels = _Labels(catalog, queries, str(d / "products.tsv"), str(d / "queries.tsv"))
    for line, r in rrows:
        where = f"{d / 'qrels.tsv'}: line {line}"
        labels.add(r["query_id"], r["product_id"], _grade(r["relevance"], where), where)
    return Dataset(d.name, catalog, queries, labels.qrels, 1.0 if threshold is None else threshold,
                   split, descriptions, freq, _used(encoding))
