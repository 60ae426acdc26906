"""Runs (ranked products per query) and the metrics of the protocol.

Recall@K = |top-K ∩ relevant| / |relevant|, Hit@K = 1 if any relevant product is in the
top K, MRR@10 = 1 / rank of the first relevant product in the top 10, NDCG@10 with linear
graded gains (the grade of each relevant product) and log2 discounts, as trec_eval's
``ndcg_cut``. Every metric is averaged over the evaluated queries; a query the run does
not answer scores 0.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_TREC_FIELD = re.compile(r"\S+")
DEFAULT_METRICS = ("R@10", "R@100", "R@1000", "Hit@10", "Hit@100", "MRR@10", "NDCG@10")


@dataclass
class Ranking:
    """One query's ranked product ids (best first) and their scores."""

    ids: list[str]
    scores: np.ndarray


class Run(dict):
    """query id -> :class:`Ranking`. Writes and reads TREC run format."""

    def add(self, qid: str, ids: list[str], scores) -> None:
        scores = np.asarray(scores, dtype=np.float64)
        if len(ids) != len(scores):
            raise ValueError(f"query {qid!r}: {len(ids)} ids but {len(scores)} scores")
        self[qid] = Ranking(list(ids), scores)

    def write_trec(self, path: str | Path, tag: str = "genret") -> None:
        """Write TREC run format, whole or not at all (a temp file, then a rename). Ids and
        the tag must be non-empty and without whitespace: the format is space-separated."""
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as f:
                for qid in sorted(self):
                    r = self[qid]
                    bad = next((x for x in (qid, tag, *r.ids) if not _TREC_FIELD.fullmatch(x)), None)
                    if bad is not None:
                        raise ValueError(f"{path}: id or tag {bad!r} is empty or holds whitespace, "
                                         "which TREC run format cannot hold; rename it")
                    f.writelines(f"{qid} Q0 {pid} {rank} {s:.6g} {tag}\n"
                                 for rank, (pid, s) in enumerate(zip(r.ids, r.scores), start=1))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def read_trec(cls, path: str | Path) -> "Run":
        """Read TREC run format (blank lines skipped); a malformed line, a product listed
        twice for one query or a file that is not UTF-8 text raises a one-line error
        naming the file and line."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); expected TREC run lines "
                             "'qid Q0 docid rank score tag'") from None
        rows: dict[str, dict[str, tuple[int, float]]] = {}
        for i, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            try:
                if len(parts) != 6:
                    raise ValueError
                rank, score = int(parts[3]), float(parts[4])
            except ValueError:
                raise ValueError(f"{path}: line {i} is not 'qid Q0 docid rank score tag' "
                                 f"(integer rank, numeric score): {line[:80]!r}") from None
            ranked = rows.setdefault(parts[0], {})
            if parts[2] in ranked:
                raise ValueError(f"{path}: line {i} lists product {parts[2]!r} a second time for query "
                                 f"{parts[0]!r}; a run ranks each product once")
            ranked[parts[2]] = (rank, score)
        run = cls()
        for qid, ranked in rows.items():
            items = sorted((rank, p, s) for p, (rank, s) in ranked.items())
            run.add(qid, [p for _, p, _ in items], [s for _, _, s in items])
        return run


def tiebreak_keys(product_ids: list[str], seed: int = 0) -> np.ndarray:
    """A seeded hash per product: the tie-breaker of every ranking (never catalog order)."""
    return np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{p}".encode(), digest_size=8).digest(),
                                    "little") >> 1 for p in product_ids], dtype=np.int64)


def top_k(scores: np.ndarray, k: int, keys: np.ndarray, valid_only: bool = False) -> np.ndarray:
    """Indices of the ``k`` best scores, ties broken by ``keys`` (ascending).

    With ``valid_only`` entries whose score is -inf are left out.
    """
    scores = np.asarray(scores)
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    cand = np.arange(n) if k == n else np.argpartition(-scores, k - 1)[:k]
    if k < n:  # every index tied with the k-th score competes on the key
        kth = scores[cand].min()
        cand = np.union1d(np.flatnonzero(scores > kth), np.flatnonzero(scores == kth))
    order = np.lexsort((keys[cand], -scores[cand]))[:k]
    out = cand[order]
    if valid_only:
        out = out[np.isfinite(scores[out])]
    return out


def query_metrics(ranked: list[str], relevant: Mapping[str, float],
                  metrics=DEFAULT_METRICS) -> dict[str, float]:
    """Metrics of one query from its ranked ids and its relevant products (id -> grade)."""
    if not relevant:
        raise ValueError("a query with no relevant product is not evaluated under the protocol")
    hits = np.array([p in relevant for p in ranked], dtype=bool)
    out = {}
    for m in metrics:
        name, k = m.split("@")
        k = int(k)
        h = hits[:k]
        if name == "R":
            out[m] = h.sum() / len(relevant)
        elif name == "Hit":
            out[m] = float(h.any())
        elif name == "MRR":
            out[m] = 1.0 / (np.argmax(h) + 1) if h.any() else 0.0
        elif name == "NDCG":
            disc = 1.0 / np.log2(np.arange(2, k + 2))
            gains = np.array([relevant.get(p, 0.0) for p in ranked[:k]])
            ideal = np.sort(np.fromiter(relevant.values(), float))[::-1][:k]
            out[m] = float(gains @ disc[: len(gains)] / (ideal @ disc[: len(ideal)]))
        else:
            raise ValueError(f"unknown metric {m!r}; use R@K, Hit@K, MRR@K or NDCG@K")
    return out


def evaluate(run: Run, dataset, qids: list[str], metrics=DEFAULT_METRICS,
             buckets: bool = True) -> dict:
    """Mean metrics over ``qids`` overall and, with ``buckets``, per head/torso/tail.

    Returns ``{"overall": {...}, "buckets": {"head": {...}, ...}, "n_queries": n}``;
    every metric dict also carries ``n_queries``.
    """
    if not qids:
        raise ValueError("no evaluated queries: the split has no query with a relevant product")
    per_q = {q: query_metrics(run[q].ids if q in run else [], dataset.relevant(q), metrics)
             for q in qids}

    def mean(qs):
        out = {m: float(np.mean([per_q[q][m] for q in qs])) if qs else 0.0 for m in metrics}
        out["n_queries"] = len(qs)
        return out

    result = {"overall": mean(qids), "n_queries": len(qids)}
    if buckets:
        b = dataset.buckets()
        result["buckets"] = {name: mean([q for q in qids if b.get(q) == name])
                             for name in ("head", "torso", "tail")}
    return result


def rrf(runs: list[Run], k: int = 1000, c: float = 60.0, keys: dict[str, int] | None = None) -> Run:
    """Reciprocal-rank fusion: score(p) = Σ_runs 1 / (c + rank); ties by a seeded hash."""
    fused = Run()
    qids = set().union(*runs) if runs else set()
    for q in qids:
        acc: dict[str, float] = {}
        for r in runs:
            if q in r:
                for rank, p in enumerate(r[q].ids, start=1):
                    acc[p] = acc.get(p, 0.0) + 1.0 / (c + rank)
        ids = list(acc)
        scores = np.fromiter(acc.values(), float, len(acc))
        tk = tiebreak_keys(ids) if keys is None else np.array([keys[p] for p in ids])
        order = top_k(scores, k, tk)
        fused.add(q, [ids[i] for i in order], scores[order])
    return fused


def exclusive_recall(runs: Mapping[str, Run], dataset, qids: list[str], k: int = 100) -> dict[str, float]:
    """Per channel: the share of (query, relevant product) pairs that this channel finds in
    its top K and no other channel does — seed 002's "exclusive recall"."""
    total = sum(len(dataset.relevant(q)) for q in qids)
    out = {}
    for name, run in runs.items():
        excl = 0
        for q in qids:
            rel = dataset.relevant(q)
            mine = {p for p in (run[q].ids[:k] if q in run else []) if p in rel}
            others = set()
            for other, r2 in runs.items():
                if other != name and q in r2:
                    others |= set(r2[q].ids[:k])
            excl += len(mine - others)
        out[name] = excl / total if total else 0.0
    return out


def paired_test(a, b, n_resamples: int = 10000, seed: int = 0) -> dict:
    """Two-sided paired randomisation (sign-flip) test of per-query scores ``a`` vs ``b``
    (Smucker et al., CIKM 2007): p = share of random sign flips of the per-query
    differences whose mean is at least as far from 0 as the observed one (the observed
    assignment counted, so p > 0)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired_test needs two equal-length, non-empty 1-d score lists "
                         f"(one value per query, same query order); got shapes {a.shape} and {b.shape}")
    d = a - b
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_resamples, len(d)))
    null = np.abs(signs @ d) / len(d)
    observed = abs(d.mean())
    p = (1 + np.count_nonzero(null >= observed - 1e-12)) / (n_resamples + 1)
    return {"mean_a": float(a.mean()), "mean_b": float(b.mean()), "diff": float(d.mean()),
            "p_value": float(p), "n_queries": len(d), "n_resamples": n_resamples}
