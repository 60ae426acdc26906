"""Long-tail data synthesis: rewards and filter on hand cases, extra train pairs, and the
`genret synth` / `genret train --extra-pairs` commands end to end on the synthetic data."""

import csv
import json

import numpy as np
import pytest

from genret.cli import main
from genret.data import DataError, protocol_split, with_extra_pairs
from genret.synth import (PAIR_COLUMNS, agreement, combined_reward, diversity, filter_products,
                          incremental_recall, pick_queries, relevance, retrieval_gain,
                          rewrite_pairs, shift_stats, synth_config, well_formed)


# ----------------------------------------------------------------------------- rewards

def test_retrieval_gain_and_incremental_recall():
    rel = {"a": 3.0, "b": 2.5, "c": 3.0, "d": 2.5}
    assert retrieval_gain(["a", "x", "c"], rel) == 0.5
    assert retrieval_gain(["x"], rel) == 0.0
    assert retrieval_gain(["a"], {}) == 0.0  # no relevant product: nothing to gain
    # the original already finds a: only c is incremental
    assert incremental_recall(["a", "x", "c"], ["a", "b"], rel) == 0.25
    assert incremental_recall(["a"], ["a"], rel) == 0.0
    assert incremental_recall(["a"], [], {}) == 0.0


def test_relevance_uses_labels_then_agreement():
    labels = {"a": 3.0, "b": 1.0}
    agree = {"c": 1.0, "d": 0.5}
    # a relevant (1), b labelled non-relevant (0), c agreed by all (1), d half (0.5), e none (0)
    assert relevance(["a", "b", "c", "d", "e"], labels, 2.5, agree) == pytest.approx(2.5 / 5)
    assert relevance([], labels, 2.5, agree) == 0.0
    # a label beats agreement
    assert relevance(["b"], labels, 2.5, {"b": 1.0}) == 0.0
    assert agreement({"bm25": ["a", "b"], "dense": ["b", "c"]}) == {"a": 0.5, "b": 1.0, "c": 0.5}


def test_diversity_per_candidate():
    assert diversity(["cordless drill", "cordless drill", "oak shelf"]) == [0.0, 0.0, 1.0]
    # {drill, kit} vs {drill, bit}: Jaccard 1/3
    assert diversity(["drill kit", "drill bit"]) == pytest.approx([2 / 3, 2 / 3])
    assert diversity(["only one"]) == [1.0]


def test_well_formed_cases():
    vocab = {"cordless", "drill", "ryobi", "kit", "18v"}
    q = "ryobi drill"
    assert well_formed("", q, vocab) == 0.0
    assert well_formed("   ", q, vocab) == 0.0
    assert well_formed("s 1 x", q, {"s", "1", "x"}) == 0.0  # debris: no word of 3+ characters
    assert well_formed("Drill  RYOBI", q, vocab) == 0.0  # the query's own words
    assert well_formed("cordless drill kit", q, vocab) == 1.0
    assert well_formed("cordless drill zzqx", q, vocab) == pytest.approx(2 / 3)  # mostly known
    assert well_formed("zzqx qqzz drill", q, vocab) == 0.0  # mostly unknown
    assert well_formed("drill drill drill kit", q, vocab) == 0.0  # degenerate repetition
    assert well_formed(" ".join(["kit", "drill", "18v"] * 2), q, vocab, max_words=5) == 0.0
    assert well_formed("cordless kit", q, vocab, max_words=2) == 1.0


def test_combined_reward_is_a_gated_weighted_mean():
    r = {"gain": 1.0, "incremental": 0.5, "relevance": 0.0, "diversity": 1.0, "form": 1.0}
    w = {"gain": 2.0, "incremental": 1.0, "relevance": 1.0, "diversity": 0.0, "form": 1.0}
    assert combined_reward(r, w) == pytest.approx((2 + 0.5 + 0 + 1) / 5)
    assert combined_reward({**r, "form": 0.0}, w) == 0.0  # ill-formed: nothing else counts


# ----------------------------------------------------------------------------- filter

def test_filter_keeps_only_agreed_unlabelled_pairs():
    lists = {"bm25": ["a", "b", "c", "d"], "dense": ["b", "c", "d", "e"]}
    fused = [("b", 0.9), ("a", 0.8), ("c", 0.7), ("e", 0.6), ("d", 0.5)]
    kept = filter_products(lists, fused, labelled={"c": 1.0})
    # a and e: one channel only; c: labelled already
    assert kept == [("b", ["bm25", "dense"], 0.9), ("d", ["bm25", "dense"], 0.5)]
    assert [p for p, _, _ in filter_products(lists, fused, {}, max_pairs=1)] == ["b"]
    assert [p for p, _, _ in filter_products(lists, fused, {}, anchor={"d", "a"})] == ["d"]
    assert [p for p, _, _ in filter_products(lists, fused, {}, min_agree=1)] == ["b", "a", "c", "e", "d"]


def test_shift_stats_hand_case():
    real = ["cordless drill", "oak shelf unit"]
    out = shift_stats(["cordless shelf", "zzqx drill kit"], real)
    assert out["real_length_mean"] == 2.5 and out["synthetic_length_mean"] == 2.5
    assert out["vocab_overlap"] == pytest.approx(3 / 5)  # cordless, shelf, drill of 5 words
    assert "centroid_cosine" not in out

    def embed(texts):  # one-hot of the first letter: a cheap stand-in for MiniLM
        rows = np.zeros((len(texts), 26), dtype=np.float32)
        rows[np.arange(len(texts)), [ord(t[0]) - 97 for t in texts]] = 1
        return rows

    out = shift_stats(["cordless", "cable"], ["cordless drill", "oak shelf"], embed)
    assert out["mean_nn_similarity"] == 1.0 and out["real_nn_similarity"] == 0.0
    assert out["centroid_cosine"] == pytest.approx(1 / np.sqrt(2))


def test_rewrite_pairs_come_from_train_only(synthetic):
    pairs = rewrite_pairs(synthetic, seed=0)
    train = {synthetic.queries[q] for q in synthetic.split("train")}
    assert pairs and all(a in train and b in train and a != b for a, b in pairs)
    by_text = {t: q for q, t in synthetic.queries.items()}
    a, b = pairs[0]
    assert set(synthetic.relevant(by_text[a])) & set(synthetic.relevant(by_text[b]))
    assert len(rewrite_pairs(synthetic, 5, seed=0)) == 5


def test_pick_queries_tail_first(synthetic):
    qids = pick_queries(synthetic, 30)
    b = synthetic.buckets()
    ranks = [("tail", "torso", "head").index(b[q]) for q in qids]
    assert ranks == sorted(ranks) and all(synthetic.query_split[q] == "train" for q in qids)


def test_bad_synth_options_are_clear():
    with pytest.raises(ValueError, match="unknown synth option"):
        synth_config(candidats=3)
    with pytest.raises(ValueError, match="min_agree"):
        synth_config(channels=["bm25"], min_agree=2)
    with pytest.raises(ValueError, match="weights"):
        synth_config(weights={"gains": 1.0})
    assert synth_config(weights={"gain": 3.0}).weights == {"gain": 3.0, "incremental": 1.0, "relevance": 1.0,
                                                           "diversity": 0.5, "form": 0.5}


def test_rewriter_keeps_its_measured_dpo_learning_rate():
    """The rewriter's DPO runs at 5e-4 (measured on the embedded LM) while the retrievers'
    default is MiniLM's 5e-5; a train block that does not name it keeps 5e-4."""
    from genret.training import TrainConfig

    assert TrainConfig().dpo_learning_rate == 5e-5
    assert synth_config().train.dpo_learning_rate == 5e-4
    assert synth_config(train={"max_steps": 3}).train.dpo_learning_rate == 5e-4
    assert synth_config(train={"dpo_learning_rate": 1e-5}).train.dpo_learning_rate == 1e-5


# ----------------------------------------------------------------------------- extra pairs

def _write_pairs(path, rows, header=("query", "product_id", "grade")):
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def _unlabelled(ds, qid):
    return next(p for p in ds.catalog if p not in ds.qrels.get(qid, {}))


def test_with_extra_pairs_adds_train_labels(synthetic, tmp_path):
    q = synthetic.split("train")[0]
    p = _unlabelled(synthetic, q)
    labelled = next(iter(synthetic.qrels[q]))
    buckets = dict(synthetic.buckets())
    new_text = next(f"made up query {i}" for i in range(100) if protocol_split(f"made up query {i}") == "train")
    f = _write_pairs(tmp_path / "pairs.tsv", [(synthetic.queries[q], p, ""),
                                              (synthetic.queries[q], labelled, "0"),  # human label wins
                                              (new_text, p, "3")])
    ds = with_extra_pairs(synthetic, f)
    assert ds.qrels[q][p] == synthetic.threshold and p in ds.relevant(q)
    assert ds.qrels[q][labelled] == synthetic.qrels[q][labelled]
    new_q = next(k for k, t in ds.queries.items() if t == new_text)
    assert ds.query_split[new_q] == "train" and ds.qrels[new_q] == {p: 3.0}
    assert {k: ds.buckets()[k] for k in buckets} == buckets  # evaluation buckets do not move
    assert ds.split("test") == synthetic.split("test") and ds.split("dev") == synthetic.split("dev")
    assert p not in synthetic.qrels.get(q, {})  # the input dataset is left alone


def test_with_extra_pairs_rejects_dev_test_and_unknown(synthetic, tmp_path):
    test_q = synthetic.split("test")[0]
    text = synthetic.queries[test_q]
    for variant in (text, "  " + text.upper()):  # the protocol's split key: strip + lower
        f = _write_pairs(tmp_path / "leak.tsv", [(variant, synthetic.product_ids[0], "3")])
        with pytest.raises(DataError, match=r"leak.tsv: line 2: .*test split.*never leak"):
            with_extra_pairs(synthetic, f)
    train_text = synthetic.queries[synthetic.split("train")[0]]
    f = _write_pairs(tmp_path / "bad.tsv", [(train_text, synthetic.product_ids[0], "3"),
                                            (train_text, "no-such-product", "3")])
    with pytest.raises(DataError, match=r"bad.tsv: line 3: product 'no-such-product' is not in"):
        with_extra_pairs(synthetic, f)
    f = _write_pairs(tmp_path / "hdr.tsv", [(train_text, synthetic.product_ids[0])],
                     header=("text", "product_id"))
    with pytest.raises(DataError, match=r"header columns \[.query., .product_id.\]"):
        with_extra_pairs(synthetic, f)
    f = _write_pairs(tmp_path / "grade.tsv", [(train_text, synthetic.product_ids[0], "high")])
    with pytest.raises(DataError, match="grade.tsv: line 2: grade 'high' is not a number"):
        with_extra_pairs(synthetic, f)


# ----------------------------------------------------------------------------- commands

@pytest.fixture(scope="module")
def synth_run(tmp_path_factory, synthetic):
    from conftest import write_tsv_dataset

    d = tmp_path_factory.mktemp("synth")
    data = write_tsv_dataset(synthetic, d / "data")
    out = d / "out"
    rc = main(["synth", "--data", str(data), "--threshold", "2.5", "--out", str(out),
               "--preset", "tiny", "--queries", "12", "--candidates", "3", "--dpo-queries", "12",
               "--full", "--quiet", "--channels", "bm25-stem,dense-zeroshot",
               "--set", "train.max_steps=8", "--set", "anchor_k=60"])
    return rc, data, out


def _read(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def test_synth_cli_writes_pairs_with_provenance(synth_run, synthetic):
    rc, _, out = synth_run
    assert rc == 0
    for name in ("pairs.tsv", "candidates.tsv", "report.json", "synth.png", "manifest.json",
                 "rewriter/config.json"):
        assert (out / name).stat().st_size > 0
    assert not list(out.parent.glob(".out.*"))  # nothing half-written left behind
    rep = json.loads((out / "report.json").read_text())
    c = rep["counts"]
    assert c["queries"] == 12 and c["candidates"] >= 12 and c["sft_pairs"] > 0
    assert set(rep["rewards"]) >= {"gain", "incremental", "relevance", "diversity", "form", "combined"}
    for key in ("synthetic_length_mean", "real_length_std", "vocab_overlap", "centroid_cosine",
                "mean_nn_similarity"):
        assert key in rep["shift"]
    assert {"sft_seconds", "assess_seconds"} <= set(rep["timings"])
    assert set(rep["filter_precision_on_labelled"]) == {"synthesis", "dpo_mining"}
    assert (out / "pairs.tsv").read_text().split("\n")[0].split("\t") == list(PAIR_COLUMNS)
    pairs = _read(out / "pairs.tsv")
    assert pairs and len(pairs) == c["pairs_kept"]
    by_text = {t: q for q, t in synthetic.queries.items()}
    cands = {(r["query"], r["rewrite"]) for r in _read(out / "candidates.tsv")}
    for r in pairs:
        q = by_text[r["query"]]
        assert synthetic.query_split[q] == "train"
        assert r["product_id"] not in synthetic.qrels.get(q, {})  # only new pairs
        assert r["channels"] == "bm25-stem+dense-zeroshot"  # both channels agreed
        assert (r["query"], r["rewrite"]) in cands and float(r["reward"]) > 0


def test_saved_rewriter_is_reused_without_training(synth_run, synthetic, tmp_path):
    from genret.synth import synthesize

    _, _, out = synth_run
    cfg = synth_config(backbone=str(out / "rewriter"), sft_pairs=0, dpo_queries=0, queries=5,
                       candidates=2, channels=["bm25-stem", "bm25"], shift_embeddings=False)
    rep = synthesize(synthetic, cfg, tmp_path / "again", progress=False)
    assert rep["counts"]["sft_pairs"] == 0 and rep["counts"]["queries"] == 5
    assert "sft_seconds" not in rep["timings"] and "dpo_seconds" not in rep["timings"]


def test_train_accepts_extra_pairs(synth_run, tmp_path, capsys):
    rc, data, out = synth_run
    pairs = out / "pairs.tsv"
    assert main(["train", "--mode", "dense", "--data", str(data), "--threshold", "2.5",
                 "--out", str(tmp_path / "dense"), "--extra-pairs", str(pairs),
                 "--set", "max_steps=1", "--set", "batch_size=4", "--set", "max_train_queries=8"]) == 0
    assert "extra pairs:" in capsys.readouterr().err
    assert (tmp_path / "dense" / "manifest.json").exists()
    bad = _write_pairs(tmp_path / "bad.tsv", [("whatever", "no-such-product", "3")])
    assert main(["train", "--mode", "dense", "--data", str(data), "--threshold", "2.5",
                 "--out", str(tmp_path / "d2"), "--extra-pairs", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.tsv: line 2" in err and "Traceback" not in err


def test_harness_row_extra_pairs_apply_to_that_fit_only(synthetic, tmp_path, monkeypatch):
    from genret import harness
    from genret.bm25 import BM25Retriever

    seen = {}

    class Recorder(BM25Retriever):
        def fit(self, dataset, **kw):
            seen[self.row] = sum(map(len, dataset.qrels.values()))
            return super().fit(dataset, **kw)

    def make(name, **cfg):
        r = Recorder()
        r.row = cfg.get("row")
        return r

    monkeypatch.setattr(harness, "make_retriever", make)
    q = synthetic.split("train")[0]
    f = _write_pairs(tmp_path / "pairs.tsv", [(synthetic.queries[q], _unlabelled(synthetic, q), "")])
    cfg = harness.CompareConfig(k=50, retrievers=[
        harness.RowConfig("plain", params={"row": "plain"}),
        harness.RowConfig("extra", params={"row": "extra"}, extra_pairs=str(f))])
    harness.compare(cfg, synthetic, tmp_path / "out")
    assert seen["extra"] == seen["plain"] + 1
    with pytest.raises(ValueError, match="extra_pairs apply to a fitted row"):
        harness.run_row(harness.RowConfig("m", model="x", extra_pairs=str(f)), synthetic, [], 10, tmp_path)


# ----------------------------------------------------------------------------- the MiniLM prefix-LM as rewriter

def test_rewriter_backbone_is_the_embedded_lm_unless_another_is_named(synthetic, monkeypatch, tmp_path, capsys):
    from genret.backbone import pretraining
    from genret.synth.pipeline import rewriter_backbone

    monkeypatch.setattr(pretraining, "default_backbone", lambda ds, preset, seed, progress: f"embedded-{preset}")
    assert rewriter_backbone(synth_config(), synthetic) == "embedded-small"  # not resolve_backbone's MiniLM
    assert rewriter_backbone(synth_config(preset=None), synthetic) == "embedded-small"
    assert rewriter_backbone(synth_config(preset="tiny"), synthetic) == "embedded-tiny"
    assert rewriter_backbone(synth_config(backbone="embedded", preset="tiny"), synthetic) == "embedded-tiny"
    for preset in ("small", None):  # the default preset is no request for the embedded LM
        cfg = synth_config(backbone="minilm", preset=preset)
        assert rewriter_backbone(cfg, synthetic) == "minilm" and cfg.preset is None
    with pytest.raises(ValueError, match="both given"):
        synth_config(backbone="minilm", preset="tiny")
    assert main(["synth", "--out", str(tmp_path / "x"), "--backbone", "minilm", "--preset", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "both given" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_synthesis_on_a_minilm_prefix_lm(tiny_backbone, synthetic, tmp_path):
    """SFT, sampling, DPO and the saved rewriter on a 2-layer random-init MiniLM-form
    prefix-LM: the rewriter's prompt is read both ways (its end marker is a prefix end),
    pairs come out, and the rewriter loads back as a prefix-LM."""
    import torch

    from genret.backbone import backbone_info, load_backbone, tokenizer_identity
    from genret.minilm import PrefixBertLM, minilm_tokenizer, prefix_lengths
    from genret.synth import synthesize
    from genret.synth.pipeline import _prompt_ids, stop_ids, text_normalizer

    cfg = synth_config(backbone=str(tiny_backbone), queries=8, candidates=3, dpo_queries=8, sft_pairs=64,
                       channels=["bm25-stem", "bm25"], shift_embeddings=False, anchor_k=60,
                       train={"max_steps": 4, "full": True, "learning_rate": 1e-2, "batch_size": 8,
                              "dpo_batch_size": 4, "progress": False})
    rep = synthesize(synthetic, cfg, tmp_path / "out", progress=False)
    c = rep["counts"]
    assert rep["backbone"] == str(tiny_backbone) and rep["config"]["preset"] is None
    assert c["sft_pairs"] == 64 and c["dpo_pairs"] > 0 and c["pairs_kept"] > 0
    assert len(_read(tmp_path / "out" / "pairs.tsv")) == c["pairs_kept"]

    rewriter = tmp_path / "out" / "rewriter"
    model, tok = load_backbone(rewriter)
    assert isinstance(model, PrefixBertLM) and model.config.prefix_lm
    assert backbone_info(rewriter)["rewriter_of"] == str(tiny_backbone)
    assert tokenizer_identity(tok) == tokenizer_identity(minilm_tokenizer())
    ids = _prompt_ids(tok, "Cordless Drill 3/4 in.")
    assert tok.convert_ids_to_tokens([ids[0], ids[-1]]) == ["<|query|>", "<|query|>"]  # markers, not WordPiece
    assert prefix_lengths(torch.tensor([ids]), model.config.prefix_end_ids).tolist() == [len(ids)]
    other = _prompt_ids(tok, "Cordless Drill 3/4 ft.")
    with torch.no_grad():  # the first query word sees the last one: the prompt is read both ways
        first = [model.base_model(torch.tensor([x])).last_hidden_state[0, 1] for x in (ids, other)]
    assert (first[0] - first[1]).abs().max() > 1e-4
    assert {"[CLS]", "[MASK]", "[UNK]", "[SEP]", "<|title|>"} <= set(tok.convert_ids_to_tokens(sorted(stop_ids(tok))))
    # rewrites come out of the uncased tokenizer normalised: what they are compared with is too
    assert text_normalizer(tok)("Café DRILL") == "cafe drill"
    rewrites = [r["rewrite"] for r in _read(tmp_path / "out" / "candidates.tsv")]
    assert rewrites and all(r == text_normalizer(tok)(r) for r in rewrites)
