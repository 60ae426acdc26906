"""Tables 7-8 of seed 002: the top-weighted terms of queries and of their rank-1 products
(literal or expansion), as JSON and Markdown."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from ..retriever import as_queries

if TYPE_CHECKING:
    from .retriever import SparseRetriever


def term_case_study(retriever: SparseRetriever, queries, n_terms: int = 15,
                    catalog: dict[str, str] | None = None, with_top_product: bool = True) -> list[dict]:
    """Tables 7-8 of seed 002: per query, the top-weighted terms (literal = a token of the
    query itself, else expansion) and the rank-1 product with its top-weighted terms
    (literal = a token of its title; ``catalog`` gives the titles)."""
    retriever._check()
    enc = retriever.encoder
    queries = as_queries(queries)
    qtexts = list(queries.values())
    Q = retriever.encode_queries(qtexts, prune=False)
    run = retriever.search(queries, k=1) if with_top_product else {}
    id_row = {p: i for i, p in enumerate(retriever.index.product_ids)}
    D = retriever.index.documents if with_top_product else None

    def terms_of(row: sp.csr_matrix, text: str, side: str) -> list[dict]:
        lit = set(enc.tokenize([text], side)["input_ids"][0].tolist()) - set(enc.special_ids)
        order = np.lexsort((row.indices, -row.data))[:n_terms]
        return [{"term": enc.term(int(row.indices[i])), "weight": round(float(row.data[i]), 4),
                 "literal": int(row.indices[i]) in lit} for i in order]

    out = []
    for i, (qid, text) in enumerate(queries.items()):
        row = Q[i]
        rec = {"query_id": qid, "query": text, "n_terms": int(row.nnz),
               "terms": terms_of(row, text, "query")}
        rec["n_literal"] = sum(t["literal"] for t in rec["terms"])
        if with_top_product and qid in run and run[qid].ids:
            pid = run[qid].ids[0]
            title = (catalog or {}).get(pid, "")
            drow = D[id_row[pid]]
            rec["top_product"] = {"product_id": pid, "title": title, "n_terms": int(drow.nnz),
                                  "terms": terms_of(drow, title, "item") if title else
                                  [{"term": enc.term(int(j)), "weight": round(float(v), 4), "literal": None}
                                   for j, v in sorted(zip(drow.indices, drow.data), key=lambda x: -x[1])[:n_terms]]}
        out.append(rec)
    return out


def case_study_markdown(study: list[dict], title: str = "Term weights") -> str:
    """Markdown in the manner of seed 002's Tables 7-8: literal terms in **bold**,
    expansion terms in _italics_, weights in parentheses."""
    def fmt(ts):
        return ", ".join((f"**{t['term']}**" if t["literal"] else f"_{t['term']}_" if t["literal"] is False
                          else t["term"]) + f" ({t['weight']:.2f})" for t in ts)
    lines = [f"### {title}", "", "Literal terms (tokens of the text itself) in **bold**, expansion "
             "terms in _italics_; weights in parentheses, highest first.", "",
             "| query | top-weighted query terms | rank-1 product | its top-weighted terms |",
             "|---|---|---|---|"]
    for r in study:
        tp = r.get("top_product") or {}
        cell = lambda s: s.replace("|", "\\|")
        lines.append(f"| {cell(r['query'])} | {cell(fmt(r['terms']))} | "
                     f"{cell(tp.get('title', ''))} | {cell(fmt(tp.get('terms', [])))} |")
    return "\n".join(lines) + "\n"


def write_case_study(retriever: SparseRetriever, queries, out: str | os.PathLike,
                     catalog: dict[str, str] | None = None, n_terms: int = 15,
                     title: str | None = None) -> list[dict]:
    """:func:`term_case_study` written as ``out.json`` and ``out.md``."""
    study = term_case_study(retriever, queries, n_terms, catalog)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(study, indent=2, ensure_ascii=False))
    out.with_suffix(".md").write_text(case_study_markdown(study, title or f"{retriever.kind} term weights"))
    return study
