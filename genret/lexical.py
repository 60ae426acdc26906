"""Lexical generative retrieval (seed 001, Query-to-MultiSpan).

A causal LM decodes up to ``max_spans`` spans of real product titles, separated by
``<|sep|>``; an FM-index over the titles' token ids forces every span to exist in the
catalog (:class:`genret.decoding.FMIndexSpanConstraint`). Span evidence is scored back
to products in the manner of SEAL (see :func:`score_products` and docs/lexical.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numba import njit

from .decoding import FMIndexSpanConstraint
from .eval import tiebreak_keys, top_k
from .generative import GenerativeRetriever, preference_pair
from .training import TrainConfig, check_config

PROMPT = "<|query|> {query}<|title|>"  # as in pretraining, spans continue like a title
_NORM = re.compile(r"[^a-z0-9]+")


def norm_word(w: str) -> str:
    """Lower-cased alphanumerics with a crude plural strip: the unit of query overlap."""
    w = _NORM.sub("", w.lower())
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


# ----------------------------------------------------------------------------- targets

def choose_spans(query_words: list[str], ids: list[int], words: list[tuple[int, int]],
                 word_text: list[str], count, max_spans: int = 3, max_span_tokens: int = 8,
                 fill_words: int = 3) -> list[list[int]]:
    """The spans of one title that a query implies, as slices of the title's own ids.

    Rule: (1) every maximal run of title words that occur in the query (``query_words``:
    the query's :func:`norm_word` forms, in query order) is a span, cut to
    ``max_span_tokens`` at a word boundary; with more than ``max_spans`` runs the most
    distinctive are kept (lowest FM-index count); (2) kept runs are ordered by where their
    first word appears in the query, so the model starts by naming, in title form, what
    the query says first; (3) when fewer than ``max_spans`` remain, the most distinctive
    window of ``fill_words`` words that overlaps no chosen span is appended last
    (ties to the earliest window), so every target names the product precisely.
    ``count(ids) -> int`` is the FM-index count.
    """
    def cut(a: int, b: int) -> tuple[int, int]:  # word indices [a, b) -> token span
        end = words[b - 1][1]
        while b - 1 > a and end - words[a][0] > max_span_tokens:
            b -= 1
            end = words[b - 1][1]
        return words[a][0], min(end, words[a][0] + max_span_tokens)

    qpos: dict[str, int] = {}
    for j, w in enumerate(query_words):
        if w:
            qpos.setdefault(w, j)
    normed = [norm_word(w) for w in word_text]
    runs: list[tuple[int, tuple[int, int]]] = []  # (query position, token span)
    i = 0
    while i < len(words):
        if normed[i] in qpos:
            j = i
            while j < len(words) and normed[j] in qpos:
                j += 1
            runs.append((min(qpos[normed[t]] for t in range(i, j)), cut(i, j)))
            i = j
        else:
            i += 1
    runs.sort(key=lambda r: (count(ids[r[1][0]:r[1][1]]), r[1][0]))
    spans = [s for _, s in sorted(runs[:max_spans], key=lambda r: (r[0], r[1][0]))]
    if len(spans) < max_spans and words:
        used = set().union(*(range(a, b) for a, b in spans)) if spans else set()
        best = None
        for a in range(max(1, len(words) - fill_words + 1)):
            s = cut(a, min(len(words), a + fill_words))
            if used.isdisjoint(range(*s)):
                c = count(ids[s[0]:s[1]])
                if best is None or c < best[0]:
                    best = (c, s)
        if best is not None:
            spans.append(best[1])
    return [ids[a:b] for a, b in spans]


# ----------------------------------------------------------------------------- scoring

def span_weights(hyps, constraint: FMIndexSpanConstraint, n_tokens: int,
                 prob_cap: float = 1 - 1e-6) -> dict[tuple, float]:
    """SEAL's weight of each decoded span n:
    ``w(n) = max(0, log[P(n|q)(1 - P(n)) / (P(n)(1 - P(n|q)))])`` where ``P(n|q)`` is the
    marginal probability that a beam contains n (beam probabilities renormalised over the
    returned beams), capped at ``prob_cap``, and ``P(n) = count(n) / n_tokens`` is its
    corpus frequency. A span in every beam has P(n|q) -> 1 and an unbounded weight; the
    cap bounds its lead over the rarity term log((1 - P(n)) / P(n)). The counts of all
    spans come from one FM-index call."""
    if not hyps:
        return {}
    s = np.array([h.score for h in hyps])
    p = np.exp(s - s.max())
    p /= p.sum()
    first: dict[tuple, int] = {}  # span -> its index, in first-seen order
    span_of, beam_of = [], []
    for b, h in enumerate(hyps):
        for span in set(constraint.spans(h.tokens)):
            span_of.append(first.setdefault(span, len(first)))
            beam_of.append(b)
    if not first:
        return {}
    marg = np.zeros(len(first))
    np.add.at(marg, np.array(span_of), p[np.array(beam_of)])
    lo, hi = constraint.index.range_batch(list(first))
    pq = np.minimum(marg, prob_cap)
    prior = np.maximum(hi - lo, 1) / n_tokens
    w = np.log(pq * (1 - prior) / (prior * (1 - pq)))
    return {span: float(w[i]) for span, i in first.items() if w[i] > 0}


@njit(cache=True)
def _coverage_scores(offsets, bounds, lengths, weights, n_occ, doc_starts, max_occurrences):
    """The loop of :func:`score_products` over spans (heaviest first) and their occurrences."""
    n_docs = doc_starts.size - 1
    score = np.zeros(n_docs)
    found = np.zeros(n_docs, np.bool_)
    covered = np.zeros(doc_starts[-1], np.bool_)
    best = np.zeros(n_docs)
    stamp = np.full(n_docs, -1, np.int64)
    docs = np.empty(offsets.size, np.int64)
    keep = np.empty(offsets.size, np.int64)
    fresh = np.empty(offsets.size)
    for s in range(weights.size):
        length = lengths[s]
        k = 0
        for j in range(bounds[s], bounds[s + 1]):
            off = offsets[j]
            d = np.searchsorted(doc_starts, off, "right") - 1
            if n_occ[s] > max_occurrences and not found[d]:
                continue  # a very frequent span only adds to products other spans found
            c = 0
            for t in range(length):
                c += covered[off + t]
            docs[k] = d
            keep[k] = off
            fresh[k] = 1.0 - c / length
            k += 1
        seen = 0
        for j in range(k):
            for t in range(length):
                covered[keep[j] + t] = True
            d = docs[j]
            v = weights[s] * fresh[j]
            if stamp[d] != s:
                stamp[d] = s
                best[d] = v
                docs[seen] = d  # docs[:seen] = this span's distinct products (j >= seen)
                seen += 1
            elif v > best[d]:
                best[d] = v
        for j in range(seen):
            score[docs[j]] += best[docs[j]]
            found[docs[j]] = True
    return score, found


def score_products(index, weights: dict[tuple, float], doc_starts: np.ndarray,
                   max_occurrences: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Products matched by the spans and their scores: Σ over spans (heaviest first) of
    ``w(n) × (fraction of the occurrence's tokens not yet covered by a heavier span)``,
    one occurrence per product per span (non-overlapping matches, coverage). Spans with
    more than ``max_occurrences`` occurrences only add to products other spans found.
    One FM-index call finds the spans, one locates them, one compiled loop scores."""
    items = sorted(weights.items(), key=lambda kv: -kv[1])
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    if not items:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    spans = [span for span, _ in items]
    lo, hi = index.range_batch(spans)
    lengths = np.array([len(span) for span in spans], dtype=np.int64)
    offsets, bounds = index.locate_batch(lo, hi, lengths, limit=max_occurrences)
    score, found = _coverage_scores(offsets, bounds, lengths, np.array([w for _, w in items]), hi - lo,
                                    doc_starts, max_occurrences)
    hit = np.flatnonzero(found)
    return hit, score[hit]


def span_offsets(title: str, spans) -> list[tuple[int, int]]:
    """Character ranges [start, end) of ``title`` where any decoded span text occurs,
    merged and in order. Case and the spacing a tokenizer puts around punctuation are
    ignored (a WordPiece "3 / 4 in." matches "3/4 in."); spans match whole words only."""
    hits = []
    for span in spans:
        chars = "".join(span.split())
        if chars:
            pattern = (r"(?<!\w)" if chars[0].isalnum() else "") + r"\s*".join(map(re.escape, chars)) \
                + (r"(?!\w)" if chars[-1].isalnum() else "")
            hits += [m.span() for m in re.finditer(pattern, title, re.IGNORECASE)]
    merged: list[tuple[int, int]] = []
    for a, b in sorted(hits):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


# ----------------------------------------------------------------------------- retriever

@dataclass
class MultispanConfig:
    backbone: str | None = None  # HF name/path, "minilm" or "embedded"; None = MiniLM unless preset is given
    preset: str | None = None  # tiny | small: genret's embedded LM of this size (genret.backbone.resolve_backbone)
    max_spans: int = 3
    max_span_tokens: int = 8
    num_beams: int = 20  # dev (experiments/lexical_dev.py): R@1000 0.698 vs 0.668 at 10, +25% decode time
    max_new_tokens: int = 30
    decode_batch_size: int = 8
    indexing_examples: bool = True  # title fragments -> spans, one per product
    max_occurrences: int = 20000
    # cap on P(n|q) in the span weight (span_weights); dev, MiniLM SFT (experiments/lexical_dev.py,
    # 952 queries): R@100 0.694 vs 0.689 at 1 - 1e-6 (p = 0.01), the 6.2M LM's choice
    span_prob_cap: float = 0.99
    dpo_queries: int = 2000  # train queries whose beams are mined for preference pairs
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        check_config(self, "", max_spans=">= 1", max_span_tokens=">= 1", num_beams=">= 1", max_new_tokens=">= 1",
                     decode_batch_size=">= 1", max_occurrences=">= 1", dpo_queries=">= 1", seed=">= 0")
        if not 0 < self.span_prob_cap < 1:
            raise ValueError(f"span_prob_cap must be in (0, 1), got {self.span_prob_cap}")


class MultispanRetriever(GenerativeRetriever):
    """Query -> multispan decoding under an FM-index -> SEAL-style product scores."""

    kind = "gr-multispan"
    config_class = MultispanConfig
    prompt = PROMPT
    search_settings = ("num_beams", "max_new_tokens", "decode_batch_size", "max_occurrences", "span_prob_cap")

    def __init__(self, stage: str = "sft", init: str | None = None, **cfg):
        super().__init__(stage, init, **cfg)
        self.index = None
        self.product_ids: list[str] = []

    # -- setup ---------------------------------------------------------------
    def _setup_catalog(self, dataset) -> None:
        from fm_index import FMIndex

        from .backbone import encode_title

        self.product_ids = dataset.product_ids
        self.titles = dict(dataset.catalog)
        self.title_ids = [encode_title(self.tokenizer, t) for t in dataset.titles]
        self.index = FMIndex.build(self.title_ids, vocab_size=len(self.tokenizer),
                                   tokenizer=self.tokenizer_identity)
        self._prepare(np.array([len(t) for t in self.title_ids], dtype=np.int64))

    def _reindex(self, dataset, progress: bool) -> None:
        """The trained model over the new catalog: the FM-index and the title tables
        (token ids, document starts, tie-break keys) are rebuilt."""
        self._setup_catalog(dataset)

    def _prepare(self, lengths: np.ndarray) -> None:
        from .backbone import special_ids, word_starts

        sp = special_ids(self.tokenizer)
        self.sep_id, self.eos_id = sp.sep, sp.eos
        self.word_start = word_starts(self.tokenizer, np.arange(len(self.tokenizer)))
        self.constraint = FMIndexSpanConstraint(self.index, self.sep_id, self.eos_id, self.word_start,
                                                self.cfg.max_span_tokens, self.cfg.max_spans)
        self.doc_starts = np.concatenate([[0], np.cumsum(lengths)])
        self.keys = tiebreak_keys(self.product_ids, self.cfg.seed)
        self.position = {p: i for i, p in enumerate(self.product_ids)}

    # -- training data -------------------------------------------------------
    def examples(self, dataset, rng: np.random.Generator) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, target ids) for train-split queries x relevant titles, plus one
        indexing example per product (a random fragment of its title as the query)."""
        from .backbone import word_spans

        pos = self.position
        count = lambda s: self.index.count(np.array(s, dtype=np.int64))  # noqa: E731
        out = []

        def add(query: str, i: int) -> None:
            ids = self.title_ids[i]
            words = word_spans(self.tokenizer, ids)
            text = [self.tokenizer.decode(ids[a:b]) for a, b in words]
            spans = choose_spans([norm_word(w) for w in query.split()], ids, words, text, count,
                                 self.cfg.max_spans, self.cfg.max_span_tokens)
            target = []
            for s in spans:
                target += (([self.sep_id] if target else []) + list(s))
            prompt = self.tokenizer(PROMPT.format(query=query), add_special_tokens=False)["input_ids"]
            out.append((prompt, target))

        for q in dataset.split("train"):
            for p in dataset.relevant(q):
                if p in pos:
                    add(dataset.queries[q], pos[p])
        if self.cfg.indexing_examples:
            for i, title in enumerate(dataset.titles):
                words = title.split()
                n = int(rng.integers(1, min(4, len(words)) + 1)) if words else 0
                pick = sorted(rng.choice(len(words), size=n, replace=False)) if n else []
                if pick:
                    add(" ".join(words[j] for j in pick).lower(), i)
        rng.shuffle(out)
        return out

    def _pair(self, hyps, relevant: dict) -> tuple[str, str, bool] | None:
        """A beam *finds* a relevant product when all its spans occur in that product's
        title; the pair is :func:`preference_pair` of the beams (chosen is always a beam)."""
        titles = [self.title_ids[self.position[p]] for p in relevant if p in self.position]

        def contains(title: list[int], span: tuple) -> bool:
            n = len(span)
            return any(tuple(title[i:i + n]) == span for i in range(len(title) - n + 1))

        finds = []
        for h in hyps:
            spans = self.constraint.spans(h.tokens)
            finds.append(bool(spans) and any(all(contains(t, s) for s in spans) for t in titles))
        pair = preference_pair(hyps, finds)
        if pair is None:
            return None
        return self.tokenizer.decode(pair[0].tokens), self.tokenizer.decode(pair[1].tokens), True

    # -- search --------------------------------------------------------------
    def _rank(self, hyps, k: int) -> tuple[list[str], np.ndarray, dict[tuple, float]]:
        """Products by SEAL-style span scores; the evidence is the span weights."""
        w = span_weights(hyps, self.constraint, self.index.n_tokens, self.cfg.span_prob_cap)
        docs, sc = score_products(self.index, w, self.doc_starts, self.cfg.max_occurrences)
        order = top_k(sc, k, self.keys[docs])
        return [self.product_ids[docs[i]] for i in order], sc[order], w

    def _explain(self, hyps, evidence: dict[tuple, float]) -> dict:
        return {"beams": [{"text": h.text, "score": h.score} for h in hyps],
                "spans": {self.tokenizer.decode(list(s)): wt
                          for s, wt in sorted(evidence.items(), key=lambda kv: -kv[1])}}

    def explain_batch(self, queries: list[str], k: int = 10) -> list[dict]:
        """Per query: the decoded beams, the span weights, and the products with the
        character ranges of the spans in each title (``matches``); one decode for all."""
        out = super().explain_batch(queries, k)
        for detail in out:
            for p in detail["products"]:
                p["matches"] = self.highlights(p.get("title", ""), detail)
        return out

    def highlights(self, title: str, detail: dict) -> list[tuple[int, int]]:
        return span_offsets(title, detail["spans"])

    # -- storage -------------------------------------------------------------
    def _save_model(self, out: Path) -> None:
        """The plain HF layout this kind has always saved (no backbone manifest inside)."""
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)

    def _save_files(self, tmp: Path) -> None:
        self.index.save(tmp / "fm_index")
        (tmp / "product_ids.json").write_text(json.dumps(self.product_ids))
        np.save(tmp / "title_lengths.npy", np.diff(self.doc_starts))

    def _load_files(self, path: Path, manifest: dict) -> None:
        from fm_index import FMIndex

        self.index = FMIndex.load(path / "fm_index", tokenizer=manifest["tokenizer"], verify=False)
        self.product_ids = json.loads((path / "product_ids.json").read_text())
        self._prepare(np.load(path / "title_lengths.npy", allow_pickle=False))
