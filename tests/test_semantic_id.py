"""semantic_id: diagnostics, quantisers, IDs (dedup, pruning, tokens), trie, artifacts, errors."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semantic_id import (EOS, PrefixTrie, SemanticIDConfig, SemanticIDError, SemanticIDs, TokenSpace,
                         build_from_embeddings, make_quantizer, sandglass_report)
from semantic_id.diagnostics import (conditional_entropies, dominant_level, gini, level_stats,
                                     normalized_entropy, path_sparsity)
from semantic_id.quantizers import ResidualKMeans

SMALL = dict(levels=3, codebook=8, kmeans_iters=10, rqvae_epochs=30, rqvae_batch_size=128,
             rqvae_hidden=(64,), rqvae_latent=16, rqvae_lr=3e-3)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems on shared CPUs: OpenMP threads only add contention."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


def clustered(n=600, d=16, k=20, seed=0):
    """L2-normalised points around k random centres, like sentence embeddings."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    x = centers[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def names(n):
    return [f"p{i}" for i in range(n)]


# ---------------------------------------------------------------- diagnostics

def test_level_stats_on_known_distributions():
    u = level_stats(np.full(8, 5))
    assert u["entropy"] == pytest.approx(1.0) and u["gini"] == pytest.approx(0.0)
    assert u["std"] == 0 and u["top1_share"] == pytest.approx(1 / 8) and u["top10_share"] == 1
    assert u["utilization"] == 1
    one = level_stats(np.array([40, 0, 0, 0, 0, 0, 0, 0]))
    assert one["entropy"] == 0 and one["gini"] == pytest.approx(7 / 8) and one["top1_share"] == 1
    assert one["utilization"] == 1 / 8 and one["std"] == pytest.approx(40 * np.sqrt(7) / 8)
    # p = 1/2, 1/4, 1/4, 0: H = 1.5 bits, over log2(4) = 2 bits
    assert normalized_entropy(np.array([2, 1, 1, 0])) == pytest.approx(0.75)
    assert gini(np.array([2, 1, 1, 0])) == pytest.approx(0.375)


@given(st.lists(st.integers(0, 50), min_size=2, max_size=30).filter(lambda c: sum(c) > 0))
def test_gini_matches_mean_absolute_difference(counts):
    x = np.array(counts, dtype=float)
    brute = np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean())
    assert gini(x) == pytest.approx(brute, abs=1e-12)
    p = x[x > 0] / x.sum()
    assert normalized_entropy(x) == pytest.approx(-(p * np.log2(p)).sum() / np.log2(len(x)))


def test_path_sparsity_conditional_entropy_and_dominant_level():
    codes = np.array([[0, 1, 0], [0, 1, 1], [1, 1, 0], [1, 1, 1]])
    ps = path_sparsity(codes, 2)
    assert [p["distinct"] for p in ps] == [2, 2, 4] and [p["possible"] for p in ps] == [2, 4, 8]
    assert ps[1]["fraction_of_items"] == 0.5
    assert conditional_entropies(codes, 2) == pytest.approx([1.0, 0.0, 1.0])
    assert dominant_level(codes, 2) == 2  # level 2 uses one code only


# ---------------------------------------------------------------- quantisers

def random_codebook_mse(x, levels, k, seed=0):
    """Residual quantisation with K random residual rows per level: the bar to beat."""
    rng, r = np.random.default_rng(seed), x.astype(np.float64).copy()
    for _ in range(levels):
        book = r[rng.choice(len(r), k, replace=False)]
        r -= book[((r[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)]
    return (r ** 2).sum(1).mean()


@pytest.mark.parametrize("name", ["rkmeans", "rqvae"])
def test_quantizer_beats_random_codebook_and_is_deterministic(name):
    x = clustered()
    cfg = SemanticIDConfig(quantizer=name, **SMALL)
    a = build_from_embeddings(names(len(x)), x, cfg)
    assert a.codes.shape == (len(x), 3) and a.codes.max() < 8
    assert np.array_equal(a.codes, a.quantizer.encode(x))
    assert a.info["reconstruction_mse"] < 0.8 * random_codebook_mse(x, 3, 8)
    b = build_from_embeddings(names(len(x)), x, cfg)
    assert np.array_equal(a.codes, b.codes)
    c = build_from_embeddings(names(len(x)), x, SemanticIDConfig(quantizer=name, seed=1, **SMALL))
    assert not np.array_equal(a.codes, c.codes)


# ---------------------------------------------------------------- IDs

codes_strategy = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.integers(1, 3), st.integers(2, 4)).flatmap(lambda lk: st.lists(
        st.lists(st.integers(0, lk[1] - 1), min_size=lk[0], max_size=lk[0]), min_size=n, max_size=n).map(
            lambda rows: (np.array(rows), lk[1]))))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codes_strategy, st.sampled_from(["none", "drop", "adaptive"]), st.integers(1, 4), st.integers(0, 3))
def test_ids_unique_prefix_free_and_found_by_trie(ck, prune, top_k, seed):
    codes, k = ck
    n, L = codes.shape
    if prune == "drop" and L == 1:
        return
    sids = SemanticIDs(names(n), codes, SemanticIDConfig(levels=L, codebook=k, prune=prune,
                                                         top_k=min(top_k, k), seed=seed))
    ids = [tuple(s.tolist()) for s in sids.ids]
    assert len(set(ids)) == n
    assert all(s[-1] == EOS and EOS not in s[:-1] for s in ids)
    assert not any(a != b and b[:len(a)] == a for a in ids for b in ids)
    assert np.array_equal(sids.lengths, [len(s) - 1 for s in ids])
    for i, s in enumerate(ids):
        assert sids.trie.items(s).tolist() == [i]
        pairs = sids.space.to_pairs(s)
        kept = [(lv, int(codes[i, lv - 1])) for lv in range(1, L + 1) if sids.keep[i, lv - 1]]
        assert pairs[:len(kept)] == kept and len(pairs) - len(kept) == (sids.dedup[i] >= 0)
    full = [tuple(r) for r in codes.tolist()]
    assert sids.collision_rate == pytest.approx(np.mean([full.count(r) > 1 for r in full]))
    if prune == "drop":
        assert not sids.keep[:, sids.pruned_level - 1].any() and sids.keep.sum() == n * (L - 1)
    if prune == "adaptive":
        col = codes[:, sids.pruned_level - 1]
        counts = np.bincount(col, minlength=k)
        top = set(np.argsort(-counts, kind="stable")[:min(top_k, k)].tolist())
        assert np.array_equal(~sids.keep[:, sids.pruned_level - 1], np.isin(col, list(top)))


def test_ids_do_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, size=(60, 2))
    perm = rng.permutation(60)
    a = SemanticIDs(names(60), codes, SemanticIDConfig(levels=2, codebook=3))
    b = SemanticIDs([names(60)[i] for i in perm], codes[perm], SemanticIDConfig(levels=2, codebook=3))
    assert a.dedup.max() > 0
    assert {p: tuple(s) for p, s in zip(a.item_ids, map(tuple, a.ids))} == \
           {p: tuple(s) for p, s in zip(b.item_ids, map(tuple, b.ids))}


def test_token_space():
    space = TokenSpace(levels=2, codebook=3, dedup_size=2)
    toks = space.tokens()
    assert len(toks) == space.vocab_size == 9 and toks[0] == "<eos_id>" and toks[1] == "<L1_0>"
    assert toks[-1] == "<L3_1>"
    for i in range(1, 9):
        lv, c = space.pair(i)
        assert space.index(lv, c) == i and space.token(i) == f"<L{lv}_{c}>"
    assert space.pair(0) is None and space.to_pairs([2, 5, 0, 3]) == [(1, 1), (2, 1)]
    with pytest.raises(SemanticIDError):
        space.index(2, 3)


def test_pruning_shortens_ids_and_report():
    x = clustered(400)
    x[:200, 0] += 3.0
    sids = build_from_embeddings(names(400), x, SemanticIDConfig(**SMALL))
    rep = sandglass_report(sids)
    assert [lv["level"] for lv in rep["levels"]] == [1, 2, 3] and rep["n_items"] == 400
    assert {"entropy", "gini", "std", "top1_share", "top10_share", "utilization"} <= set(rep["levels"][0])
    assert rep["dominant_level"] == int(np.argmin([lv["entropy"] for lv in rep["levels"]])) + 1
    drop = sids.with_pruning("drop").report()
    adaptive = sids.with_pruning("adaptive", top_k=2).report()
    assert drop["pruned_level"] == rep["dominant_level"] and drop["pruned_fraction"] == 1
    assert drop["mean_length"] < rep["mean_length"]
    assert adaptive["mean_length"] < rep["mean_length"] and 0 < adaptive["pruned_fraction"] < 1
    explicit = sids.with_pruning("drop", prune_level=1)
    assert explicit.pruned_level == 1 and not explicit.keep[:, 0].any()
    json.dumps(rep)


# ---------------------------------------------------------------- trie

seqs_strategy = st.lists(st.lists(st.integers(0, 5), max_size=5), max_size=20)


@settings(max_examples=80, deadline=None)
@given(seqs_strategy, st.lists(st.lists(st.integers(0, 7), max_size=4), max_size=10))
def test_trie_matches_brute_force(seqs, extra):
    trie = PrefixTrie.build(seqs)
    prefixes = sorted({tuple(s[:k]) for s in seqs for k in range(len(s) + 1)} | {tuple(p) for p in extra})
    batch = trie.next_tokens([list(p) for p in prefixes]) if prefixes else []
    for p, got_batch in zip(prefixes, batch):
        want = sorted({s[len(p)] for s in seqs if len(s) > len(p) and tuple(s[:len(p)]) == p})
        assert trie.next_tokens(list(p)).tolist() == want == got_batch.tolist()
        assert trie.items(list(p)).tolist() == [i for i, s in enumerate(seqs) if tuple(s[:len(p)]) == p]
    assert trie.next_tokens([]).tolist() == sorted({s[0] for s in seqs if s})
    assert len(trie) == len(seqs)


def test_trie_save_load(tmp_path):
    trie = PrefixTrie.build([[1, 2, 0], [1, 3, 0], [2, 0]])
    trie.save(tmp_path / "t")
    back = PrefixTrie.load(tmp_path / "t")
    assert back.next_tokens([[1], [2], [9]])[0].tolist() == [2, 3]
    assert back.items([1]).tolist() == [0, 1] and back.node([9]) == -1
    with pytest.raises(SemanticIDError, match="holds"):
        SemanticIDs.load(tmp_path / "t")


# ---------------------------------------------------------------- artifacts

@pytest.mark.parametrize("name", ["rkmeans", "rqvae"])
def test_save_load_round_trip(tmp_path, name):
    x = clustered(300)
    cfg = SemanticIDConfig(quantizer=name, prune="adaptive", top_k=2, **{**SMALL, "rqvae_epochs": 2})
    sids = build_from_embeddings(names(300), x, cfg, encoder="test-encoder")
    sids.save(tmp_path / "sid")
    sids.save(tmp_path / "sid")  # replaces atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sid"]
    back = SemanticIDs.load(tmp_path / "sid", encoder="test-encoder")
    assert back.item_ids == sids.item_ids and np.array_equal(back.codes, sids.codes)
    assert np.array_equal(back.tokens, sids.tokens) and back.config == sids.config
    assert np.allclose(back.quantizer.decode(back.codes), sids.quantizer.decode(sids.codes))
    assert back.report() == sids.report()
    sids.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_load_errors(tmp_path):
    sids = build_from_embeddings(names(100), clustered(100), SemanticIDConfig(**SMALL), encoder="enc-a")
    sids.save(tmp_path / "ok")
    with pytest.raises(SemanticIDError, match="encoder"):
        SemanticIDs.load(tmp_path / "ok", encoder="enc-b")
    with pytest.raises(SemanticIDError, match="no manifest"):
        SemanticIDs.load(tmp_path / "missing")
    bad = tmp_path / "version"
    shutil.copytree(tmp_path / "ok", bad)
    m = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(SemanticIDError, match="version"):
        SemanticIDs.load(bad)
    trunc = tmp_path / "trunc"
    shutil.copytree(tmp_path / "ok", trunc)
    data = (trunc / "codes.npy").read_bytes()
    (trunc / "codes.npy").write_bytes(data[:-10])
    with pytest.raises(SemanticIDError, match="truncated"):
        SemanticIDs.load(trunc)
    (trunc / "codes.npy").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(SemanticIDError, match="checksum"):
        SemanticIDs.load(trunc)


def test_input_errors():
    x = clustered(50)
    with pytest.raises(SemanticIDError, match="empty"):
        build_from_embeddings([], np.zeros((0, 4), np.float32))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(SemanticIDError, match="NaN"):
        build_from_embeddings(names(50), bad, SemanticIDConfig(codebook=4))
    with pytest.raises(SemanticIDError, match="exceeds the number of items"):
        build_from_embeddings(names(50), x, SemanticIDConfig(codebook=64))
    with pytest.raises(SemanticIDError, match="one per item"):
        build_from_embeddings(names(49), x, SemanticIDConfig(codebook=4))
    with pytest.raises(SemanticIDError, match="not unique"):
        build_from_embeddings(["a"] * 50, x, SemanticIDConfig(codebook=4))
    for kwargs, msg in [({"levels": 0}, "levels"), ({"codebook": 1}, "codebook"),
                        ({"quantizer": "pq"}, "unknown quantizer"), ({"prune": "x"}, "unknown prune"),
                        ({"prune": "adaptive", "top_k": 0}, "top_k"),
                        ({"prune": "adaptive", "codebook": 8, "top_k": 9}, "top_k"),
                        ({"prune": "drop", "levels": 1}, "only level"), ({"prune_level": 4}, "prune_level")]:
        with pytest.raises(SemanticIDError, match=msg):
            SemanticIDConfig(**kwargs)
    with pytest.raises(SemanticIDError, match="unknown quantizer"):
        make_quantizer("pq")
    assert isinstance(make_quantizer("rkmeans", 2, 4), ResidualKMeans)


# ---------------------------------------------------------------- encoder (real MiniLM)

def test_encoder_cache_and_plain_hf_path(tmp_path, monkeypatch):
    from semantic_id import Encoder, build_semantic_ids, embed_texts
    from semantic_id.encoders import default_model_path

    texts = [f"{c} {w}" for c in ("cordless", "white", "outdoor", "copper", "led")
             for w in ("drill 18v", "paint gallon", "light fixture", "pipe fitting")]
    emb, ident = embed_texts(texts, cache_dir=tmp_path / "cache", progress=False)
    assert emb.shape == (20, 384) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5) and "all-MiniLM-L6-v2" in ident
    assert len(list((tmp_path / "cache").glob("emb-*.npy"))) == 1
    monkeypatch.setattr(Encoder, "_load", lambda self: pytest.fail("cache miss"))
    again, _ = embed_texts(texts, cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(again, emb)
    sids = build_semantic_ids(names(20), texts, SemanticIDConfig(levels=2, codebook=4),
                              cache_dir=tmp_path / "cache", progress=False)
    assert sids.encoder == ident and len(set(map(tuple, sids.ids))) == 20
    monkeypatch.undo()
    # the same weights as a plain HF encoder (no modules.json): mean pooling gives the same vectors
    hf = tmp_path / "plain"
    hf.mkdir()
    for f in default_model_path().iterdir():
        if f.is_file() and f.name not in ("modules.json", "sentence_bert_config.json",
                                          "config_sentence_transformers.json"):
            (hf / f.name).symlink_to(f)
    enc = Encoder(hf)
    assert enc.backend == "hf" and enc.identity != ident
    assert ((enc.encode(texts, progress=False) * emb).sum(1) > 0.999).all()
