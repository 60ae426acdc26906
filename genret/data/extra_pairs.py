"""Extra (query, product) train labels from a TSV file (``genret synth``'s ``pairs.tsv``)."""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import Dataset, DataError, query_id
from .files import _grade, _read_tsv


def with_extra_pairs(dataset: Dataset, path: str | os.PathLike) -> Dataset:
    """``dataset`` plus the (query, product) pairs of a TSV file as extra **train** labels.

    The file has a header with ``query`` (the query text) and ``product_id``, and
    optionally ``grade`` (empty or absent: the dataset's threshold, i.e. relevant); other
    columns (e.g. the provenance of ``genret synth``) are ignored. A query text of the
    dataset must be a train query; a new text becomes a new train query unless it equals
    a dev/test query up to case and surrounding spaces (the protocol's split key). Labels
    already in the dataset are never overwritten, and the first row for a pair wins.
    Query buckets of the original queries do not move.
    """
    path = Path(path)
    rows = _read_tsv(path, ["query", "product_id"], "the extra pairs need a tab-separated "
                     "header with query and product_id (optional grade)")
    by_text = {t: q for q, t in dataset.queries.items()}
    held_out = {t.strip().lower(): s for q, t in dataset.queries.items()
                if (s := dataset.query_split.get(q)) != "train"}
    queries, split = dict(dataset.queries), dict(dataset.query_split)
    qrels = {q: dict(r) for q, r in dataset.qrels.items()}
    for line, r in rows:
        where = f"{path}: line {line}"
        text, pid = r["query"], r["product_id"]
        if not text.strip():
            raise DataError(f"{where}: empty query; every row needs a query text")
        if pid not in dataset.catalog:
            raise DataError(f"{where}: product {pid!r} is not in the {dataset.name} catalog; "
                            "extra pairs must name products of the dataset they extend")
        qid = by_text.get(text)
        s = split.get(qid) if qid is not None else held_out.get(text.strip().lower())
        if s not in (None, "train"):
            raise DataError(f"{where}: query {text!r} belongs to the {s} split; extra pairs may "
                            "only add train labels (never leak into evaluation): remove the row")
        if qid is None:
            qid = by_text[text] = query_id(text)
            if qid in queries:
                raise DataError(f"{where}: query id {qid} of {text!r} is already used by "
                                f"{queries[qid]!r}; rename that query id")
            queries[qid], split[qid] = text, "train"
        grade = (_grade(r["grade"], where, "grade") if (r.get("grade") or "").strip()
                 else dataset.threshold)
        qrels.setdefault(qid, {}).setdefault(pid, grade)
    out = Dataset(dataset.name, dataset.catalog, queries, qrels, dataset.threshold, split,
                  dataset.descriptions, dataset.query_freq, dataset.encoding)
    if len(queries) == len(dataset.queries):
        out._buckets = dataset._buckets
    else:
        out._buckets = {**out.buckets(), **dataset.buckets()}
    return out
