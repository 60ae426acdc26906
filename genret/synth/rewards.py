"""The pure functions of the synthesis (no model, no retriever, no files): the five
rewards and their combination, channel agreement and the relevance filter, and the
distribution-shift statistics of rewrites against real queries."""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..data import terms


REWARDS = ("gain", "incremental", "relevance", "diversity", "form")


# ----------------------------------------------------------------------------- rewards

def retrieval_gain(retrieved: list[str], relevant) -> float:
    """Reward 1: the share of the query's relevant products that the rewrite retrieves,
    ``|R ∩ rel| / |rel|`` (0 for a query without relevant products)."""
    rel = set(relevant)
    return len(rel.intersection(retrieved)) / len(rel) if rel else 0.0


def incremental_recall(retrieved: list[str], original: list[str], relevant) -> float:
    """Reward 2: relevant products the rewrite retrieves and the original query does not,
    ``|(R \\ O) ∩ rel| / |rel|``."""
    rel = set(relevant)
    return len(rel.intersection(retrieved) - set(original)) / len(rel) if rel else 0.0


def relevance(judged: list[str], labels: dict[str, float], threshold: float,
              agreement: dict[str, float]) -> float:
    """Reward 3: mean relevance of the judged products (the rewrite's fused top ranks):
    a labelled product counts 1 if its grade reaches ``threshold``, else 0; an unlabelled
    one counts its channel agreement (share of channels retrieving it). 0 for none."""
    if not judged:
        return 0.0
    return float(np.mean([(labels[p] >= threshold) if p in labels else agreement.get(p, 0.0)
                          for p in judged]))


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def diversity(candidates: list[str]) -> list[float]:
    """Reward 4, per candidate: 1 - the largest word-set Jaccard similarity to another
    candidate of the same query (a duplicate scores 0, a lone candidate 1)."""
    sets = [set(terms(c)) for c in candidates]
    return [1.0 - max((_jaccard(s, t) for j, t in enumerate(sets) if j != i), default=0.0)
            for i, s in enumerate(sets)]


def well_formed(rewrite: str, query: str, vocab: set[str], max_words: int = 12,
                min_known: float = 0.5, max_repeat: int = 2) -> float:
    """Reward 5: 0 for a rewrite that has no word of 3+ characters (empty or debris),
    has the query's words (same word set), more than ``max_words`` words, a word more
    than ``max_repeat`` times, or fewer than ``min_known`` known words; otherwise the
    share of its words found in ``vocab``."""
    words = terms(rewrite)
    if max(map(len, words), default=0) < 3 or set(words) == set(terms(query)) or len(words) > max_words:
        return 0.0
    if max(Counter(words).values()) > max_repeat:
        return 0.0
    known = sum(w in vocab for w in words) / len(words)
    return known if known >= min_known else 0.0


def combined_reward(rewards: dict[str, float], weights: dict[str, float]) -> float:
    """``R = [form > 0] · Σ_i w_i r_i / Σ_i w_i``: the weighted mean of the rewards, and
    0 for an ill-formed rewrite whatever else it scores."""
    if rewards.get("form", 1.0) <= 0:
        return 0.0
    total = sum(w for r, w in weights.items() if w > 0)
    return sum(w * rewards[r] for r, w in weights.items() if w > 0) / total


# ----------------------------------------------------------------------------- filter

def agreement(channel_lists: dict[str, list[str]]) -> dict[str, float]:
    """Product -> share of the channels whose list contains it."""
    counts = Counter(p for ids in channel_lists.values() for p in set(ids))
    return {p: c / len(channel_lists) for p, c in counts.items()}


def filter_products(channel_lists: dict[str, list[str]], fused: list[tuple[str, float]],
                    labelled, min_agree: int = 2, max_pairs: int | None = None,
                    anchor=None) -> list[tuple[str, list[str], float]]:
    """The relevance filter: ``(product, channels, fused score)`` for the products of the
    rewrite's fused ranking (best first) that at least ``min_agree`` channel lists
    (each a channel's top-k for the rewrite) contain, that are not ``labelled`` for the
    original query and, when an ``anchor`` set is given (what the original query
    retrieves), that are in it; at most ``max_pairs``."""
    out = []
    for p, score in fused:
        chans = [c for c, ids in channel_lists.items() if p in ids]
        if len(chans) >= min_agree and p not in labelled and (anchor is None or p in anchor):
            out.append((p, chans, float(score)))
            if max_pairs is not None and len(out) >= max_pairs:
                break
    return out


# ----------------------------------------------------------------------------- shift

def shift_stats(rewrites: list[str], real: list[str], embed=None) -> dict:
    """Distribution shift of the rewrites against real queries: word-length mean/std of
    both, the share of rewrite words seen in the real queries, and with ``embed``
    (texts -> L2-normalised rows) the cosine of the two centroids, the mean
    nearest-neighbour cosine of each rewrite to the real queries, and as its baseline the
    same for each real query to the other real queries."""
    lens = {name: [len(terms(t)) for t in texts] for name, texts in (("synthetic", rewrites), ("real", real))}
    vocab = {w for t in real for w in terms(t)}
    words = [w for t in rewrites for w in terms(t)]
    out = {f"{name}_length_{f.__name__}": float(f(v)) if v else 0.0
           for name, v in lens.items() for f in (np.mean, np.std)}
    out["vocab_overlap"] = sum(w in vocab for w in words) / len(words) if words else 0.0
    if embed is not None and rewrites and len(real) > 1:
        s, r = embed(rewrites), embed(real)
        cs, cr = s.mean(0), r.mean(0)
        out["centroid_cosine"] = float(cs @ cr / (np.linalg.norm(cs) * np.linalg.norm(cr)))
        out["mean_nn_similarity"] = float((s @ r.T).max(1).mean())
        rr = r @ r.T
        np.fill_diagonal(rr, -np.inf)
        out["real_nn_similarity"] = float(rr.max(1).mean())
    return out
