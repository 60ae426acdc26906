"""BM25 channel: brute-force scoring, reference figures on the real data, save/load, shuffling."""

import math
from collections import Counter

import numpy as np
import pytest

from genret.bm25 import BM25Retriever
from genret.data import Dataset
from genret.eval import evaluate
from genret.retriever import load_retriever, make_retriever


def _brute_force_scores(docs, query, k1=1.2, b=0.75):
    """Lucene (8+) BM25, written out: idf = ln(1 + (N - df + .5) / (df + .5)), and no
    (k1 + 1) factor in the numerator (it does not change rankings)."""
    n, avgdl = len(docs), sum(map(len, docs)) / len(docs)
    df = Counter(t for d in docs for t in set(d))
    out = np.zeros(n)
    for i, d in enumerate(docs):
        tf = Counter(d)
        for t in query:
            if tf[t]:
                idf = math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                out[i] += idf * tf[t] / (tf[t] + k1 * (1 - b + b * len(d) / avgdl))
    return out


def test_scores_match_brute_force(synthetic):
    r = BM25Retriever().fit(synthetic)
    docs = r._tokenize(synthetic.titles, False)
    qids = synthetic.split("all")[:30]
    run = r.search({q: synthetic.queries[q] for q in qids}, k=50)
    for q in qids:
        bf = _brute_force_scores(docs, r._tokenize([synthetic.queries[q]], False)[0])
        got = dict(zip(run[q].ids, run[q].scores))
        assert len(got) == min(50, int((bf > 0).sum()))
        for pid, s in got.items():
            assert s == pytest.approx(bf[synthetic.product_ids.index(pid)], rel=1e-4)
        # nothing outside the run scores higher than the lowest score inside it
        assert np.sort(bf)[::-1][len(got) - 1] == pytest.approx(min(got.values()), rel=1e-4)


@pytest.mark.parametrize("n_products", [None, 3000])
def test_search_is_a_full_sort_of_the_matched_products(synthetic, n_products):
    """Each ranking equals sorting every product with a positive score by (score desc,
    tie-break key): ties included, for k below, at and above the number matched."""
    from genret.data import synthetic_dataset
    from genret.eval import tiebreak_keys

    ds = synthetic if n_products is None else synthetic_dataset(n_products=n_products, n_queries=400, seed=5)
    r = BM25Retriever(stemmer="english").fit(ds)
    keys = tiebreak_keys(ds.product_ids)
    qs = {q: ds.queries[q] for q in ds.split("all")[:150]}
    tied_at_cut = 0
    for k in (1, 7, 100, len(ds.catalog)):
        run = r.search(qs, k)
        for q, toks in zip(qs, r._tokenize(list(qs.values()), False)):
            scores = r.model.get_scores(toks) if toks else np.zeros(len(keys))
            pos = np.flatnonzero(scores > 0)
            order = pos[np.lexsort((keys[pos], -scores[pos]))]
            assert run[q].ids == [ds.product_ids[i] for i in order[:k]]
            assert np.array_equal(run[q].scores, scores[order[:k]])
            tied_at_cut += len(order) > k and scores[order[k - 1]] == scores[order[k]]
    assert tied_at_cut > 20  # the tie-break decides who is in at the cut, often


def test_fit_takes_validated_overrides_and_keywords_only(synthetic, tmp_path):
    r = BM25Retriever().fit(synthetic, k1=0.5, out_dir=tmp_path / "unused", progress=True)
    assert r.cfg.k1 == 0.5 and not (tmp_path / "unused").exists()
    with pytest.raises(ValueError, match=r"^bm25: unknown setting\(s\) k2; valid: b, k1, method, seed, stemmer, "
                                         r"stopwords$"):
        BM25Retriever().fit(synthetic, k2=0.5)
    with pytest.raises(TypeError):
        BM25Retriever().fit(synthetic, None, True)


def test_shuffled_catalog_gives_same_run(synthetic):
    rng = np.random.default_rng(1)
    items = list(synthetic.catalog.items())
    shuffled = Dataset(synthetic.name, dict(items[i] for i in rng.permutation(len(items))),
                       synthetic.queries, synthetic.qrels, synthetic.threshold, synthetic.query_split)
    qs = {q: synthetic.queries[q] for q in synthetic.split("test")}
    a = BM25Retriever().fit(synthetic).search(qs, 100)
    b = BM25Retriever().fit(shuffled).search(qs, 100)
    for q in qs:
        assert a[q].ids == b[q].ids


def test_save_load_round_trip(synthetic, tmp_path):
    r = make_retriever("bm25-stem").fit(synthetic)
    r.save(tmp_path / "m")
    back = load_retriever(tmp_path / "m")
    assert isinstance(back, BM25Retriever) and back.cfg.stemmer == "english"
    qs = {q: synthetic.queries[q] for q in synthetic.split("test")}
    a, b = r.search(qs, 20), back.search(qs, 20)
    assert all(a[q].ids == b[q].ids for q in qs)


def test_bad_input(synthetic):
    with pytest.raises(ValueError, match="empty"):
        BM25Retriever().fit(synthetic).search({"q": "  "})
    with pytest.raises(ValueError, match="stemmer"):
        BM25Retriever(stemmer="klingon").fit(synthetic)
    with pytest.raises(ValueError, match="unknown retriever"):
        make_retriever("bm26")


@pytest.mark.parametrize("name,r100", [("bm25", 0.6755), ("bm25-stem", 0.7385)])
def test_reference_figures_on_homedepot(homedepot, name, r100):
    qids = homedepot.split("test")
    run = make_retriever(name).fit(homedepot).search({q: homedepot.queries[q] for q in qids}, 1000)
    m = evaluate(run, homedepot, qids)["overall"]
    assert m["n_queries"] == 994
    assert m["R@100"] == pytest.approx(r100, abs=0.002)
