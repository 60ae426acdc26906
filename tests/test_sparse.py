"""Learned sparse retrieval (SPLADE, PROSPER): building blocks against hand-made values,
the inverted index against brute force, training, persistence and the ablation switches.

Tiny random backbones keep it fast: a 2-layer Qwen2 with a 400-piece byte-level BPE (a
genret backbone directory) and a 2-layer BERT with a 400-piece WordPiece vocabulary.
"""

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genret.eval import evaluate, tiebreak_keys, top_k
from genret.retriever import load_retriever, make_retriever
from genret.sparse import (FlopsRegularizer, InfoNCE, InvertedIndex, ProsperRetriever, SparseEncoder,
                           SparseLoss, SpladeRetriever, case_study_markdown, flops_figure, last_token_pool,
                           lfw_topk, literal_indicator, lrn_combine, normalise, prune_top_terms,
                           quadratic_warmup, term_case_study)
import tiny

FAST = dict(batch_size=16, log_every=1, lr=1e-3, head_lr=3e-3, mlm_warmup_steps=0,
            max_doc_len=24, max_query_len=12)


# ----------------------------------------------------------------------------- tiny backbones

@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory, synthetic):
    """A random 2-layer Qwen2 with a byte-level BPE trained on the synthetic texts."""
    return tiny.tiny_qwen(tmp_path_factory.mktemp("tiny") / "qwen", synthetic)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, synthetic):
    """A random 2-layer BERT with a WordPiece vocabulary trained on the synthetic texts."""
    return tiny.tiny_bert(tmp_path_factory.mktemp("tiny") / "bert", synthetic)


def _queries(ds, split="train", n=None):
    qids = ds.split(split)[:n]
    return {q: ds.queries[q] for q in qids}


@pytest.fixture(scope="module")
def prosper_trained(tiny_qwen, synthetic):
    return ProsperRetriever(backbone=tiny_qwen, epochs=1, max_steps=None, k_q=16, k_d=32,
                            **FAST).fit(synthetic, progress=False)


@pytest.fixture(scope="module")
def splade_trained(tiny_bert, synthetic):
    return SpladeRetriever(backbone=tiny_bert, epochs=1, max_steps=None, init_doc_terms=40,
                           **{**FAST, "mlm_warmup_steps": 5}).fit(synthetic, progress=False)


# ----------------------------------------------------------------------------- building blocks

def test_flops_regulariser_on_a_hand_made_batch():
    reps = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 4.0]])
    # column means 2, 0, 1, 2 -> 4 + 0 + 1 + 4
    assert FlopsRegularizer()(reps).item() == pytest.approx(9.0)


def test_flops_warmup_is_quadratic():
    T, lam = 100, 5e-3
    assert quadratic_warmup(0, T, lam) == 0.0
    assert quadratic_warmup(50, T, lam) == pytest.approx(lam / 4)
    assert quadratic_warmup(10, T, lam) == pytest.approx(lam / 100)
    assert quadratic_warmup(T, T, lam) == pytest.approx(lam)
    assert quadratic_warmup(3 * T, T, lam) == pytest.approx(lam)
    for t in (5, 10, 20, 40):  # doubling the step quadruples λ
        assert quadratic_warmup(2 * t, T, lam) == pytest.approx(4 * quadratic_warmup(t, T, lam))
    assert quadratic_warmup(7, 0, lam) == lam


def test_sparse_loss_returns_named_terms_and_masks_known_positives():
    q = {"rep": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), "basic": torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])}
    d = {"rep": torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 1]]), "basic": torch.ones(3, 3)}
    loss = SparseLoss(lambda_q=0.5, lambda_d=0.1, warmup_steps=10, norm="none")
    out = loss(q, d, step=5)
    assert {"loss", "rank", "flops_q", "flops_d", "lambda_q", "lambda_d"} <= set(out)
    assert out["lambda_q"] == pytest.approx(0.125) and out["lambda_d"] == pytest.approx(0.025)
    assert out["flops_q"] == pytest.approx(0.5) and out["flops_d"] == pytest.approx(3.0)
    assert out["loss"].item() == pytest.approx(out["rank"] + 0.125 * 0.5 + 0.025 * 3.0, rel=1e-5)
    s = torch.tensor([[2.0, 0.0, 2.0], [0.0, 2.0, 0.0]])
    ce = -(2 - math.log(math.exp(2) + 1 + math.exp(2)) + 2 - math.log(1 + math.exp(2) + 1)) / 2
    assert out["rank"] == pytest.approx(ce, rel=1e-5)
    mask = torch.tensor([[False, False, True], [False, False, False]])  # doc 2 is a positive of q0
    masked = InfoNCE()(s, mask).item()
    assert masked == pytest.approx(-(2 - math.log(math.exp(2) + 1) + 2 - math.log(2 + math.exp(2))) / 2,
                                   rel=1e-5)


def test_lrn_equation_on_a_hand_made_tensor():
    w = torch.tensor([[0.1, 0.5, 0.0, 0.2]])
    wp = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    I = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    # max(w') = 3 -> residual 2, 0, 1, 3; only literal terms (0 and 2) receive it
    assert torch.allclose(lrn_combine(w, wp, I, "residual"), torch.tensor([[2.1, 0.5, 1.0, 0.2]]))
    assert torch.allclose(lrn_combine(w, wp, I, "add"), torch.tensor([[1.1, 0.5, 2.0, 0.2]]))
    assert torch.equal(lrn_combine(w, wp, I, "none"), w)


def test_literal_indicator_skips_padding_and_special_tokens():
    ids = torch.tensor([[5, 7, 5, 1, 0], [3, 1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    I = literal_indicator(ids, mask, vocab_size=9, special_ids=[1])
    assert I[0].nonzero().flatten().tolist() == [5, 7]
    assert I[1].nonzero().flatten().tolist() == [3]
    assert I.max() == 1.0


def test_lfw_keeps_exactly_k_terms():
    torch.manual_seed(0)
    W = torch.rand(5, 200) + 0.01  # all 200 non-zero
    out = lfw_topk(W, 16)
    assert ((out != 0).sum(-1) == 16).all()
    for i in range(5):  # the survivors are the 16 largest, unchanged
        top = W[i].topk(16).indices
        assert torch.equal(out[i, top], W[i, top])
    ties = torch.ones(2, 50)
    assert ((lfw_topk(ties, 10) != 0).sum(-1) == 10).all()
    sparse = torch.zeros(2, 200)
    sparse[0, :16] = 1.0
    sparse[1, 3:10] = 2.0
    assert torch.equal(lfw_topk(sparse, 16), sparse)  # ||W||_0 <= k: left as it is


@pytest.mark.parametrize("side", ["right", "left"])
def test_last_token_pooling_picks_the_last_non_pad_token(side):
    lengths = [3, 5, 1]
    L = 6
    mask = torch.zeros(3, L, dtype=torch.long)
    x = torch.arange(3 * L * 2, dtype=torch.float).reshape(3, L, 2)
    want = []
    for i, n in enumerate(lengths):
        if side == "right":
            mask[i, :n] = 1
            want.append(x[i, n - 1])
        else:
            mask[i, L - n:] = 1
            want.append(x[i, L - 1])
    assert torch.equal(last_token_pool(x, mask), torch.stack(want))


def test_encoder_tokenisation_ends_with_eos_and_pools_it(tiny_qwen):
    enc = SparseEncoder.from_pretrained(ProsperRetriever(backbone=tiny_qwen).cfg)
    b = enc.tokenize(["acme drill", "behr white interior paint gloss"], "query")
    for row, m in zip(b["input_ids"], b["attention_mask"]):
        n = int(m.sum())
        assert row[n - 1].item() == enc.tokenizer.eos_token_id
        assert row[0].item() == enc.tokenizer.convert_tokens_to_ids("<|query|>")
        assert m[:n].all() and not m[n:].any()  # right padding
    assert enc.tokenize(["x"], "item")["input_ids"][0, 0].item() == \
        enc.tokenizer.convert_tokens_to_ids("<|title|>")
    # lowercase=True (default): a cased BPE sees "Drill" in titles and "drill" in queries alike
    assert torch.equal(enc.tokenize(["Acme DRILL"], "item")["input_ids"],
                       enc.tokenize(["acme drill"], "item")["input_ids"])


def test_query_term_pruning_keeps_top_16():
    rng = np.random.default_rng(0)
    dense = rng.random((4, 100)) * (rng.random((4, 100)) < 0.5)
    dense[3] = 0
    dense[3, :5] = 1.0  # a row with fewer than 16 terms stays whole
    m = sp.csr_matrix(dense)
    p = prune_top_terms(m, 16)
    for i in range(3):
        row = p[i].toarray().ravel()
        assert (row != 0).sum() == 16
        assert set(np.flatnonzero(row)) == set(np.argsort(-dense[i])[:16])
        assert np.array_equal(row[row != 0], dense[i][row != 0])
    assert np.array_equal(p[3].toarray(), m[3].toarray())
    assert prune_top_terms(m, None).nnz == m.nnz


def test_normalisation_variants():
    W = torch.tensor([[3.0, 4.0, 0.0]])
    assert torch.allclose(normalise(W, "query", "q"), torch.tensor([[0.6, 0.8, 0.0]]))
    assert torch.equal(normalise(W, "item", "q"), W)
    assert torch.allclose(normalise(W, "item", "d"), torch.tensor([[0.6, 0.8, 0.0]]))
    assert torch.allclose(normalise(W, "item", "all"), torch.tensor([[0.6, 0.8, 0.0]]))
    assert torch.allclose(normalise(W, "query", "q-l1"), torch.tensor([[3 / 7, 4 / 7, 0.0]]))
    assert torch.equal(normalise(W, "query", "none"), W)


# ----------------------------------------------------------------------------- inverted index

def _random_sparse(rng, n, v, density, levels=None):
    vals = rng.random((n, v)) * (rng.random((n, v)) < density)
    if levels:
        vals = np.ceil(vals * levels) / levels  # coarse values -> many tied scores
    return sp.csr_matrix(vals.astype(np.float32))


def test_inverted_index_equals_brute_force_dense_scoring():
    rng = np.random.default_rng(0)
    D = _random_sparse(rng, 300, 80, 0.05, levels=4)  # exact in float32
    Q = _random_sparse(rng, 25, 80, 0.08, levels=4)
    ids = [f"p{i}" for i in rng.permutation(300)]
    index = InvertedIndex.from_documents(D, ids, seed=0)
    keys = tiebreak_keys(ids, 0)
    got = index.search(Q, k=20, batch_size=7)
    dense = Q.toarray().astype(np.float64) @ D.toarray().T.astype(np.float64)
    overlap = (Q.toarray() != 0).astype(int) @ (D.toarray() != 0).T.astype(int)
    for i, (idx, scores) in enumerate(got):
        s = np.where(overlap[i] > 0, dense[i], -np.inf)  # only products sharing a term
        want = top_k(s, 20, keys, valid_only=True)
        assert idx.tolist() == want.tolist()
        assert np.allclose(scores, s[want], rtol=1e-5)
    assert flops_figure(Q, D) == pytest.approx(overlap.mean())


def test_inverted_index_save_load(tmp_path):
    rng = np.random.default_rng(1)
    D = _random_sparse(rng, 50, 30, 0.2)
    idx = InvertedIndex.from_documents(D, [f"p{i}" for i in range(50)])
    idx.save(tmp_path)
    back = InvertedIndex.load(tmp_path, idx.postings.shape)
    assert (back.postings != idx.postings).nnz == 0 and back.product_ids == idx.product_ids
    assert not list(tmp_path.glob("*.pkl"))


def test_retriever_search_equals_dense_scoring(tiny_qwen, synthetic):
    r = ProsperRetriever(backbone=tiny_qwen, max_steps=0, query_top_terms=None, k_q=16, k_d=32,
                         **FAST).fit(synthetic, progress=False)
    qs = _queries(synthetic, "test", 10)
    run = r.search(qs, k=50)
    enc = r.encoder
    with torch.inference_mode():
        D = enc.score_rep(enc(enc.tokenize(synthetic.titles, "item"), "item"), "item").double()
        Q = enc.score_rep(enc(enc.tokenize(list(qs.values()), "query"), "query"), "query").double()
    S, overlap = (Q @ D.T).numpy(), ((Q != 0).double() @ (D != 0).double().T).numpy()
    keys = tiebreak_keys(synthetic.product_ids, 0)
    for i, q in enumerate(qs):
        s = np.where(overlap[i] > 0, S[i], -np.inf)
        want = [synthetic.product_ids[j] for j in top_k(s, 50, keys, valid_only=True)]
        got = run[q].ids
        assert len(got) == len(want)
        # same scores rank for rank (float32 index vs float64 brute force)
        assert np.allclose(run[q].scores, np.sort(s[np.isfinite(s)])[::-1][:50], rtol=1e-4, atol=1e-5)
        assert sum(a == b for a, b in zip(got, want)) >= len(want) - 2  # near-ties may swap


# ----------------------------------------------------------------------------- training

def _random_r10(ds, qids):
    return np.mean([min(1.0, 10 / len(ds.catalog) * 1.0) for _ in qids])


@pytest.mark.parametrize("which", ["prosper", "splade"])
def test_short_training_lowers_loss_and_beats_random(which, prosper_trained, splade_trained, synthetic):
    r = prosper_trained if which == "prosper" else splade_trained
    log = r.train_log
    assert len(log) >= 10
    first = np.mean([x["rank"] for x in log[:3]])
    last = np.mean([x["rank"] for x in log[-3:]])
    assert last < first
    for x in log:  # the named terms reach the log
        assert {"loss", "rank", "flops_q", "flops_d", "lambda_q", "lambda_d", "nnz_q", "nnz_d"} <= set(x)
    qs = _queries(synthetic, "train")
    res = evaluate(r.search(qs, 100), synthetic, list(qs), buckets=False)["overall"]
    assert res["R@10"] > 5 * _random_r10(synthetic, qs)  # random ≈ 10/400
    assert r.flops(qs) > 0
    if which == "splade":
        assert r.info["mlm_warmup"]["steps"] == 5


def test_hard_negatives_come_from_bm25_and_labels(synthetic):
    from genret.sparse import SparseConfig, mine_negatives

    qids = synthetic.split("train")[:40]
    pools = mine_negatives(synthetic, qids, SparseConfig(bm25_depth=10), progress=False)
    assert pools["bm25"] and pools["labelled"]
    for q, negs in pools["bm25"].items():
        assert not set(negs) & set(synthetic.relevant(q))
    for q, negs in pools["labelled"].items():
        assert all(synthetic.qrels[q][p] < synthetic.threshold for p in negs)


@pytest.mark.parametrize("which", ["prosper", "splade"])
def test_save_load_round_trip_gives_identical_runs(which, prosper_trained, splade_trained, synthetic, tmp_path):
    r = prosper_trained if which == "prosper" else splade_trained
    r.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["kind"] == which and manifest["backbone"]["tokenizer_sha256"]
    assert manifest["config"]["pooling"] == ("last" if which == "prosper" else "max")
    assert (tmp_path / "m" / "heads.safetensors").exists()
    assert {"index_data.npy", "index_indices.npy", "index_indptr.npy"} <= set(manifest["files"])
    assert not any(f.endswith((".pkl", ".bin", ".pt")) for f in manifest["files"])
    back = load_retriever(tmp_path / "m")
    assert type(back) is type(r)
    qs = _queries(synthetic, "test")
    a, b = r.search(qs, 100), back.search(qs, 100)
    for q in qs:
        assert a[q].ids == b[q].ids
        assert np.array_equal(a[q].scores, b[q].scores)


def test_shuffled_catalog_gives_same_run(tiny_qwen, synthetic):
    from genret.data import Dataset

    rng = np.random.default_rng(3)
    items = list(synthetic.catalog.items())
    shuffled = Dataset(synthetic.name, dict(items[i] for i in rng.permutation(len(items))),
                       synthetic.queries, synthetic.qrels, synthetic.threshold, synthetic.query_split)
    qs = _queries(synthetic, "test", 15)
    cfg = dict(backbone=tiny_qwen, max_steps=0, **FAST)
    a = ProsperRetriever(**cfg).fit(synthetic, progress=False).search(qs, 50)
    b = ProsperRetriever(**cfg).fit(shuffled, progress=False).search(qs, 50)
    for q in qs:
        assert a[q].ids == b[q].ids


# ----------------------------------------------------------------------------- ablations, case study

def test_registry_rows_and_ablation_configs():
    want = {"splade": {}, "prosper": {}, "prosper-no-lrn": {"lrn": "none"},
            "prosper-lrn-add": {"lrn": "add"}, "prosper-lrn-query": {"lrn_side": "query"},
            "prosper-lrn-item": {"lrn_side": "item"}, "prosper-no-lfw": {"lfw": False},
            "prosper-maxpool": {"pooling": "max"}, "prosper-minilm": {"backbone": "minilm"},
            "prosper-no-norm": {"norm": "none"}, "prosper-all-norm": {"norm": "all"},
            "prosper-d-norm": {"norm": "d"}, "prosper-l1-norm": {"norm": "q-l1"}}
    for name, overrides in want.items():
        r = make_retriever(name)
        assert r.kind == name.split("-")[0]
        for k, v in overrides.items():
            assert getattr(r.cfg, k) == v
    p, s = make_retriever("prosper").cfg, make_retriever("splade").cfg
    assert (p.pooling, p.lrn, p.lfw, p.norm, p.hard_negatives) == ("last", "residual", True, "q", 0)
    assert (s.pooling, s.lrn, s.lfw, s.norm, s.hard_negatives) == ("max", "none", False, "none", 1)
    with pytest.raises(ValueError, match="lrn"):
        make_retriever("prosper", lrn="bogus")


def _encoder(tiny_qwen, **cfg):
    torch.manual_seed(0)
    return SparseEncoder.from_pretrained(ProsperRetriever(backbone=tiny_qwen, **cfg).cfg).eval()


def test_ablation_switches_change_the_model_as_documented(tiny_qwen):
    texts = ["acme cordless drill m123a", "white ceiling fan with led light kit"]
    with torch.no_grad():
        base = _encoder(tiny_qwen, lfw=False)
        b = base.tokenize(texts, "item")
        out = base(b, "item")
        I = literal_indicator(b["input_ids"], b["attention_mask"], base.vocab_size, base.special_ids)
        h = base.hidden_states(b["input_ids"], b["attention_mask"])
        wp = base.fc(last_token_pool(torch.log1p(torch.relu(h)), b["attention_mask"]))
        # residual LRN: W − w is max(w') − w' on the literal terms and 0 elsewhere
        assert torch.allclose(out["rep"] - out["basic"], I * (wp.amax(-1, keepdim=True) - wp), atol=1e-6)
        assert (I.sum(-1) > 0).all()

        add = _encoder(tiny_qwen, lfw=False, lrn="add")
        o = add(b, "item")
        assert torch.allclose(o["rep"] - o["basic"], I * add.fc(
            last_token_pool(torch.log1p(torch.relu(add.hidden_states(b["input_ids"], b["attention_mask"]))),
                            b["attention_mask"])), atol=1e-6)

        none = _encoder(tiny_qwen, lfw=False, lrn="none")
        assert none.fc is None
        o = none(b, "item")
        assert torch.equal(o["rep"], o["basic"])

        for side_only, same in (("query", "item"), ("item", "query")):
            e = _encoder(tiny_qwen, lfw=False, lrn_side=side_only)
            o_same = e(e.tokenize(texts, same), same)
            o_lrn = e(e.tokenize(texts, side_only), side_only)
            assert torch.equal(o_same["rep"], o_same["basic"])
            assert not torch.equal(o_lrn["rep"], o_lrn["basic"])

        lfw = _encoder(tiny_qwen, lfw=True, k_q=8, k_d=12)
        assert ((lfw(lfw.tokenize(texts, "query"), "query")["rep"] != 0).sum(-1) <= 8).all()
        assert ((lfw(b, "item")["rep"] != 0).sum(-1) <= 12).all()
        assert ((out["rep"] != 0).sum(-1) > 12).all()  # without the window: more terms

        mp = _encoder(tiny_qwen, lfw=False, pooling="max")
        o = mp(b, "item")
        logits = torch.log1p(torch.relu(mp.logits(mp.hidden_states(b["input_ids"], b["attention_mask"]))))
        logits = logits * b["attention_mask"].unsqueeze(-1)
        w = logits.amax(1).index_fill(1, torch.tensor(mp.special_ids), 0.0)
        assert torch.allclose(o["basic"], w, atol=1e-6)
        assert not torch.allclose(o["basic"], out["basic"])


def test_term_case_study(prosper_trained, synthetic):
    qs = _queries(synthetic, "test", 3)
    study = term_case_study(prosper_trained, qs, n_terms=8, catalog=synthetic.catalog)
    assert len(study) == 3
    for rec in study:
        assert 0 < len(rec["terms"]) <= 8
        ws = [t["weight"] for t in rec["terms"]]
        assert ws == sorted(ws, reverse=True)
        assert rec["n_literal"] >= 1  # the LRN lifts the query's own tokens
        assert rec["top_product"]["title"] == synthetic.catalog[rec["top_product"]["product_id"]]
    md = case_study_markdown(study)
    assert md.count("\n| ") == 4 and "**" in md


def test_backbone_is_minilm_unless_a_preset_picks_the_embedded_lm(tiny_qwen, synthetic, monkeypatch):
    import genret.backbone.pretraining
    from genret.backbone import resolve_backbone
    from genret.minilm import minilm_path
    from genret.sparse.encoder import _resolve_backbone

    calls = []

    def fake_default(dataset, preset="small", seed=0, **_):
        calls.append((dataset.name, preset, seed))
        return tiny_qwen

    monkeypatch.setattr(genret.backbone.pretraining, "default_backbone", fake_default)
    for name in ("prosper", "splade"):
        c = make_retriever(name).cfg
        assert resolve_backbone(c.backbone, c.preset, synthetic) == "minilm"
        assert _resolve_backbone(c.backbone, synthetic, c.preset) == minilm_path()
    assert calls == []
    r = make_retriever("prosper", preset="small", max_steps=0, **FAST).fit(synthetic, progress=False,
                                                                        out_dir="ignored")
    assert calls == [("synthetic", "small", 0)] and r.encoder.kind == "causal"
    assert resolve_backbone("embedded", None, synthetic, seed=3) == str(tiny_qwen)
    assert calls[-1] == ("synthetic", "small", 3)
    assert resolve_backbone("some/dir", "tiny", synthetic) == "some/dir"  # a backbone given wins
    with pytest.raises(ValueError, match="prosper: unknown setting.*bogus; valid: .*lambda_q"):
        make_retriever("prosper").fit(synthetic, progress=False, bogus=1)
