"""The BEIR layout: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{train,dev,test}.tsv``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from .dataset import SPLITS, Dataset, DataError, _split_all
from .files import _grade, _Labels, _need_file, _nonempty, _read_text, _read_tsv, _used


def _read_jsonl(path: Path, fix: str, encoding: str | None) -> list[tuple[int, dict]]:
    _need_file(path, fix)
    out = []
    for i, line in enumerate(_read_text(path, encoding).splitlines(), start=1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i} is not valid JSON ({e.msg}); "
                                "one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {i} is a JSON {type(obj).__name__}, not an "
                                "object; one JSON object per line")
            out.append((i, obj))
    return out


def _jsonl_id(obj: dict, path: Path, line: int, seen: dict[str, int]) -> str:
    if obj.get("_id") is None or not str(obj["_id"]).strip():
        raise DataError(f"{path}: line {line} has no _id (or an empty one); every line needs one")
    k = str(obj["_id"]).strip()
    if k in seen:
        raise DataError(f"{path}: line {line} repeats _id {k!r} (first on line {seen[k]}); "
                        "ids must be unique")
    seen[k] = line
    return k


def load_beir(path: str | os.PathLike, threshold: float | None = None,
              encoding: str | None = None) -> Dataset:
    """BEIR layout: ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text),
    ``qrels/{train,dev,test}.tsv`` (header ``query-id corpus-id score``). The title is
    the product text (the body ``text`` when the title is empty); ``text`` is also kept
    as the description. The qrels file names the split of its queries (a query in two
    files is an error); a query in none of them is split by the sha1 rule. Default
    threshold 1."""
    d = Path(path)
    fix = "the BEIR layout needs corpus.jsonl, queries.jsonl and qrels/{train,dev,test}.tsv"
    catalog, descriptions, queries = {}, {}, {}
    seen: dict[str, int] = {}
    for i, doc in _read_jsonl(d / "corpus.jsonl", fix, encoding):
        pid = _jsonl_id(doc, d / "corpus.jsonl", i, seen)
        catalog[pid] = str(doc.get("title") or doc.get("text") or "")
        descriptions[pid] = str(doc.get("text") or "")
    seen = {}
    for i, q in _read_jsonl(d / "queries.jsonl", fix, encoding):
        qid = _jsonl_id(q, d / "queries.jsonl", i, seen)
        text = q.get("text")
        queries[qid] = _nonempty(None if text is None else str(text), f"{d / 'queries.jsonl'}: line {i}",
                                 "text")
    files = [f for f in ((d / "qrels" / f"{s}.tsv") for s in SPLITS) if f.exists()]
    if not files:
        raise DataError(f"{d / 'qrels'}: no train.tsv, dev.tsv or test.tsv; {fix}")
    split = _split_all(queries)
    labelled_in: dict[str, Path] = {}
    labels = _Labels(catalog, queries, str(d / "corpus.jsonl"), str(d / "queries.jsonl"))
    for f in files:
        for line, r in _read_tsv(f, ["query-id", "corpus-id", "score"], fix, encoding):
            where = f"{f}: line {line}"
            qid = r["query-id"]
            if labelled_in.setdefault(qid, f) != f:
                raise DataError(f"{where}: query {qid!r} is also labelled in {labelled_in[qid]}; "
                                "a query belongs to one split")
            labels.add(qid, r["corpus-id"], _grade(r["score"], where, "score"), where)
            split[qid] = f.stem
    return Dataset(d.name, catalog, queries, labels.qrels, 1.0 if threshold is None else threshold,
                   split, descriptions, encoding=_used(encoding))
