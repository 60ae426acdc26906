"""Metrics against an independent implementation (ir-measures / trec_eval), Run I/O, fusion."""

import numpy as np
import pytest

from genret.data import Dataset
from genret.eval import Run, evaluate, exclusive_recall, query_metrics, rrf, tiebreak_keys, top_k


def _random_case(seed, n_q=40, n_p=300):
    rng = np.random.default_rng(seed)
    pids = [f"p{i}" for i in range(n_p)]
    queries = {f"q{i}": f"query {i}" for i in range(n_q)}
    qrels, run = {}, Run()
    for q in queries:
        labelled = rng.choice(n_p, size=rng.integers(1, 25), replace=False)
        qrels[q] = {pids[i]: float(rng.choice([1, 2, 2.5, 2.67, 3])) for i in labelled}
        qrels[q][pids[labelled[0]]] = 3.0  # at least one relevant
        ranked = rng.permutation(n_p)[: rng.integers(0, 300)]
        # put some relevant products near the top
        ranked = np.concatenate([labelled[: rng.integers(0, len(labelled))], ranked])
        ranked = list(dict.fromkeys(ranked.tolist()))
        run.add(q, [pids[i] for i in ranked], -np.arange(len(ranked), dtype=float))
    ds = Dataset("t", {p: p for p in pids}, queries, qrels, 2.5, {q: "test" for q in queries})
    return ds, run


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_ir_measures(seed):
    import ir_measures
    from ir_measures import Qrel, ScoredDoc

    ds, run = _random_case(seed)
    qids = ds.split("test")
    ours = evaluate(run, ds, qids, metrics=("R@10", "R@100", "R@1000", "MRR@10", "NDCG@10"),
                    buckets=False)["overall"]
    # ir-measures sees only the relevant pairs (grade >= threshold), integer gains = 100 x grade
    # (trec_eval needs integers; NDCG with linear gains is scale-free)
    qrels = [Qrel(q, p, round(100 * g)) for q in qids for p, g in ds.relevant(q).items()]
    docs = [ScoredDoc(q, p, float(s)) for q in qids for p, s in zip(run[q].ids, run[q].scores)]
    names = {"R@10": "R@10", "R@100": "R@100", "R@1000": "R@1000", "MRR@10": "RR@10",
             "NDCG@10": "nDCG@10"}
    theirs = ir_measures.calc_aggregate([ir_measures.parse_measure(v) for v in names.values()],
                                        qrels, docs)
    for ours_name, their_name in names.items():
        assert ours[ours_name] == pytest.approx(theirs[ir_measures.parse_measure(their_name)], abs=1e-9)


def test_hand_case():
    rel = {"a": 3.0, "b": 2.5}
    m = query_metrics(["x", "b", "y", "a"], rel, ("R@2", "R@10", "Hit@1", "MRR@10", "NDCG@10"))
    assert m["R@2"] == 0.5 and m["R@10"] == 1.0 and m["Hit@1"] == 0.0 and m["MRR@10"] == 0.5
    dcg = 2.5 / np.log2(3) + 3 / np.log2(5)
    assert m["NDCG@10"] == pytest.approx(dcg / (3 + 2.5 / np.log2(3)))
    with pytest.raises(ValueError, match="no relevant"):
        query_metrics(["x"], {})
    with pytest.raises(ValueError, match="unknown metric"):
        query_metrics(["x"], rel, ("P@10",))


def test_unanswered_query_scores_zero():
    ds, run = _random_case(0)
    qids = ds.split("test")
    del run[qids[0]]
    res = evaluate(run, ds, qids, buckets=False)
    assert res["n_queries"] == len(qids)


def test_top_k_ties_by_key_not_position():
    scores = np.array([1.0, 5.0, 5.0, 5.0, 2.0, 5.0])
    keys = np.array([0, 40, 10, 30, 0, 20])
    assert top_k(scores, 3, keys).tolist() == [2, 5, 3]
    assert top_k(scores, 10, keys).tolist() == [2, 5, 3, 1, 4, 0]
    inf = np.array([-np.inf, 1.0, -np.inf])
    assert top_k(inf, 3, np.zeros(3, dtype=np.int64), valid_only=True).tolist() == [1]
    # permuting the inputs permutes nothing in the answer
    perm = np.random.default_rng(0).permutation(6)
    assert [perm[i] for i in top_k(scores[perm], 3, keys[perm])] == [2, 5, 3]


def test_tiebreak_keys_depend_on_seed_and_id_only():
    a = tiebreak_keys(["p1", "p2", "p3"], 0)
    b = tiebreak_keys(["p3", "p1", "p2"], 0)
    assert a.tolist() == [b[1], b[2], b[0]]
    assert tiebreak_keys(["p1"], 1)[0] != a[0]


def test_trec_round_trip(tmp_path):
    _, run = _random_case(3)
    run.write_trec(tmp_path / "r.trec")
    back = Run.read_trec(tmp_path / "r.trec")
    assert set(back) == {q for q in run if run[q].ids}
    for q in back:
        assert back[q].ids == run[q].ids
        np.testing.assert_allclose(back[q].scores, run[q].scores, rtol=1e-5)


def test_rrf_and_exclusive_recall():
    ds = Dataset("t", {p: p for p in "abcdef"}, {"q": "q"}, {"q": {"a": 3, "b": 3, "c": 3}}, 2.5,
                 {"q": "test"})
    r1, r2 = Run(), Run()
    r1.add("q", ["a", "d", "b"], [3, 2, 1])
    r2.add("q", ["d", "c", "e"], [3, 2, 1])
    fused = rrf([r1, r2], k=10)
    assert fused["q"].ids[0] == "d"  # in both runs
    assert set(fused["q"].ids) == set("abcde")
    ex = exclusive_recall({"one": r1, "two": r2}, ds, ["q"], k=3)
    assert ex == {"one": pytest.approx(2 / 3), "two": pytest.approx(1 / 3)}


def test_paired_test_matches_scipy_permutation_test():
    """The sign-flip test against scipy's paired permutation test (an independent one)."""
    from scipy.stats import permutation_test

    from genret.eval import paired_test

    rng = np.random.default_rng(3)
    for shift in (0.0, 0.05, 0.2):
        a = rng.random(200)
        b = np.clip(a - shift + rng.normal(0, 0.3, 200), 0, 1)
        ours = paired_test(a, b, n_resamples=20000, seed=1)
        ref = permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                               n_resamples=20000, alternative="two-sided", random_state=1)
        assert abs(ours["diff"] - (a - b).mean()) < 1e-12
        assert abs(ours["p_value"] - ref.pvalue) < 0.01 + 0.1 * ref.pvalue, (shift, ours, ref.pvalue)
    assert paired_test([0.5] * 30, [0.5] * 30)["p_value"] == 1.0  # no difference at all
    with pytest.raises(ValueError, match="equal-length"):
        paired_test([1, 0], [1, 0, 1])
