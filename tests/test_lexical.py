"""Lexical multispan: target rule, SEAL-style scoring on hand cases, a tiny end-to-end run."""

import numpy as np
import pytest

from fm_index import FMIndex
from genret.decoding import FMIndexSpanConstraint, Hypothesis
from genret.lexical import choose_spans, norm_word, score_products, span_weights

# token ids: each "word" is one token here (every token starts a word)
TITLES = [[10, 11, 12, 13],   # doc 0: "ryobi cordless drill 20v"
          [14, 11, 15],       # doc 1: "dewalt cordless saw"
          [10, 16, 12],       # doc 2: "ryobi hammer drill"
          [17, 18]]           # doc 3: "white paint"
WORDS = {10: "Ryobi", 11: "Cordless", 12: "Drill", 13: "20V", 14: "DeWalt", 15: "Saw",
         16: "Hammer", 17: "White", 18: "Paint"}


@pytest.fixture(scope="module")
def index():
    return FMIndex.build(TITLES, vocab_size=20)


def _spans(index, query, i, **kw):
    ids = TITLES[i]
    words = [(j, j + 1) for j in range(len(ids))]
    return choose_spans([norm_word(w) for w in query.split()], ids, words,
                        [WORDS[t] for t in ids], lambda s: index.count(np.array(s)), **kw)


def test_norm_word():
    assert norm_word("Drills") == norm_word("drill") == "drill"
    assert norm_word("glass") == "glass" and norm_word("3/4") == "34"


def test_choose_spans_rule(index):
    # query words form one run "cordless drill"; the fill window is the rarest 3-word window
    # that does not overlap it: none exists, so only the run is kept with max_spans=1
    assert _spans(index, "cordless drills", 0, max_spans=1) == [[11, 12]]
    # two runs "ryobi" (count 2) and "20v" (count 1): in query order, whatever the counts
    assert _spans(index, "ryobi 20v", 0, max_spans=2) == [[10], [13]]
    assert _spans(index, "20v ryobi", 0, max_spans=2) == [[13], [10]]
    # more runs than max_spans: the most distinctive ("20v") is kept
    assert _spans(index, "ryobi 20v", 0, max_spans=1) == [[13]]
    # the fill window comes after the query runs
    assert _spans(index, "drill", 2, max_spans=2, fill_words=1) == [[12], [16]]
    # no overlap: the most distinctive window fills in
    assert _spans(index, "bosch", 3, max_spans=2, fill_words=2) == [[17, 18]]
    # spans are cut at max_span_tokens on a word boundary
    assert _spans(index, "ryobi cordless drill", 0, max_spans=1, max_span_tokens=2) == [[10, 11]]


def test_score_products_hand_case(index):
    starts = np.concatenate([[0], np.cumsum([len(t) for t in TITLES])])
    docs, scores = score_products(index, {(11, 12): 2.0, (12,): 1.0, (10,): 0.5}, starts)
    got = dict(zip(docs.tolist(), scores.tolist()))
    # doc 0: "cordless drill" (2.0), "drill" already covered by it (0), "ryobi" (0.5)
    # doc 2: "drill" (1.0) + "ryobi" (0.5); doc 1 and 3 contain none of the spans
    assert got == {0: pytest.approx(2.5), 2: pytest.approx(1.5)}
    # a span with more occurrences than max_occurrences only adds to products found before
    docs, scores = score_products(index, {(13,): 2.0, (11,): 1.0}, starts, max_occurrences=1)
    assert dict(zip(docs.tolist(), scores.tolist())) == {0: pytest.approx(3.0)}


def _brute_scores(docs, weights):
    """score_products written out: every span occurrence by scanning every title."""
    covered = [[False] * len(d) for d in docs]
    score, found = {}, set()
    for span, w in sorted(weights.items(), key=lambda kv: -kv[1]):
        n = len(span)
        occ = [(d, i) for d, t in enumerate(docs) for i in range(len(t) - n + 1) if tuple(t[i:i + n]) == span]
        fresh = {(d, i): 1 - sum(covered[d][i:i + n]) / n for d, i in occ}
        best = {}
        for (d, i), f in fresh.items():
            covered[d][i:i + n] = [True] * n
            best[d] = max(best.get(d, 0.0), w * f)
        for d, v in best.items():
            score[d] = score.get(d, 0.0) + v
            found.add(d)
    return score


@pytest.mark.parametrize("seed", range(4))
def test_score_products_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    docs = [rng.integers(2, 6, rng.integers(1, 12)).tolist() for _ in range(70)]  # > 64: two offset blocks
    idx = FMIndex.build(docs, vocab_size=6)
    starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    spans = {tuple(d[a:a + n]) for d in docs[:20] for a in range(len(d)) for n in (1, 2, 3) if a + n <= len(d)}
    weights = {s: float(rng.random() * 3) for s in sorted(spans)[:25]} | {(5, 5, 5, 5, 5, 5): 1.0}
    got_docs, got = score_products(idx, weights, starts)  # (max_occurrences: the hand case above)
    want = _brute_scores(docs, weights)
    assert got_docs.tolist() == sorted(want)
    assert got.tolist() == pytest.approx([want[d] for d in sorted(want)])


def test_span_weights_follow_seal(index):
    c = FMIndexSpanConstraint(index, sep_id=1, eos_id=0, max_spans=3)
    hyps = [Hypothesis([11, 12, 1, 10], "", np.log(0.75)), Hypothesis([15], "", np.log(0.25))]
    w = span_weights(hyps, c, index.n_tokens)
    n = index.n_tokens
    seal = lambda pq, cnt: np.log(pq * (1 - cnt / n) / ((cnt / n) * (1 - pq)))  # noqa: E731
    assert w[(11, 12)] == pytest.approx(seal(0.75, 1))
    assert w[(10,)] == pytest.approx(seal(0.75, 2))
    assert w[(15,)] == pytest.approx(seal(0.25, 1))
    # the cap on P(n|q) bounds the weight of spans most beams share
    capped = span_weights(hyps, c, index.n_tokens, prob_cap=0.5)
    assert capped[(11, 12)] == pytest.approx(seal(0.5, 1)) and capped[(15,)] == w[(15,)]


# ----------------------------------------------------------------------------- end to end

TINY = {"preset": "tiny", "num_beams": 5, "dpo_queries": 40,
        "train": {"epochs": 2, "full": True, "progress": False, "batch_size": 32}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic):
    from genret.lexical import MultispanRetriever

    work = tmp_path_factory.mktemp("multispan")
    r = MultispanRetriever(stage="sft", **TINY).fit(synthetic, out_dir=str(work / "work"))
    r.save(work / "sft")
    return r, work / "sft"


def test_every_decoded_span_occurs_in_the_catalog(trained, synthetic):
    r, _ = trained
    queries = [synthetic.queries[q] for q in synthetic.split("all")[:40]]
    n = 0
    for hyps in r.decode(queries):
        assert hyps, "every query decodes at least one beam"
        for h in hyps:
            for span in r.constraint.spans(h.tokens):
                assert r.index.count(np.array(span)) > 0, r.tokenizer.decode(list(span))
                n += 1
    assert n >= len(queries)


def test_save_load_gives_the_same_run(trained, synthetic):
    from genret.retriever import load_retriever

    r, path = trained
    qs = {q: synthetic.queries[q] for q in synthetic.split("test")[:10]}
    back = load_retriever(path)
    a, b = r.search(qs, 50), back.search(qs, 50)
    assert all(a[q].ids == b[q].ids for q in qs)
    assert back.info["stage"] == "sft" and back.info["sft_examples"] > 0


def test_dpo_on_sft_model_mines_pairs(trained, synthetic, tmp_path):
    from genret.lexical import MultispanRetriever

    _, path = trained
    r = MultispanRetriever(stage="dpo", init=str(path), **TINY).fit(synthetic, out_dir=str(tmp_path))
    assert r.info["stage"] == "dpo" and r.info["dpo_pairs"] > 0
    run = r.search({"q": synthetic.queries[synthetic.split("test")[0]]}, 20)
    assert len(run["q"].ids) > 0


def test_mismatched_tokenizer_is_refused(trained, foreign_tokenizer_copy):
    from genret.artifact import ArtifactError
    from genret.retriever import load_retriever

    with pytest.raises(ArtifactError, match="tokenizer"):
        load_retriever(foreign_tokenizer_copy(trained[1]))


def test_empty_query_is_refused(trained):
    r, _ = trained
    with pytest.raises(ValueError, match="empty"):
        r.search({"q": " "})


def test_cli_train_then_search(synthetic_dir, tmp_path, capsys):
    import json

    from genret.cli import main

    out = tmp_path / "m"
    assert main(["train", "--mode", "multispan", "--data", str(synthetic_dir), "--threshold", "2.5",
                 "--out", str(out), "--preset", "tiny", "--full", "--set", "num_beams=4",
                 "--set", "train.max_steps=5", "--set", "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["search", "--model", str(out), "--k", "5", "--json", "cordless", "drill"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["beams"] and detail["spans"] and len(detail["products"]) <= 5
    assert main(["eval", "--retriever", "multispan", "--model", str(out), "--data", str(synthetic_dir),
                 "--threshold", "2.5", "--split", "dev", "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out)["R@100"] <= 1
