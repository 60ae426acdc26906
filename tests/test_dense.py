"""Dense channel: exact flat search vs numpy, IVF vs flat, ties, save/load, shuffling,
fine-tuning, bad input. Synthetic catalog + the real (bundled) MiniLM; < 1 min on 2 cores."""

import json
from pathlib import Path

import numpy as np
import pytest

from genret.artifact import ArtifactError
from genret.data import Dataset
from genret.dense import (DenseConfig, DenseContrastiveLoss, DenseRetriever, build_examples,
                          core_term, delete_term, load_encoder)
from genret.eval import evaluate, tiebreak_keys, top_k
from genret.retriever import load_retriever, make_retriever


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dense-cache"))


@pytest.fixture(scope="module")
def flat(synthetic, cache_dir):
    return DenseRetriever(cache_dir=cache_dir).fit(synthetic, progress=False)


def _queries(ds, split="test"):
    return {q: ds.queries[q] for q in ds.split(split)}


def _shuffled(ds, seed=1):
    items = list(ds.catalog.items())
    order = np.random.default_rng(seed).permutation(len(items))
    return Dataset(ds.name, dict(items[i] for i in order), ds.queries, ds.qrels, ds.threshold,
                   ds.query_split)


def _same(a, b):
    assert set(a) == set(b)
    for q in a:
        assert a[q].ids == b[q].ids
        np.testing.assert_allclose(a[q].scores, b[q].scores, rtol=0, atol=1e-6)


def test_search_returns_valid_runs(flat, synthetic):
    qs = _queries(synthetic)
    run = flat.search(qs, k=50)
    assert set(run) == set(qs)
    keys = dict(zip(synthetic.product_ids, tiebreak_keys(synthetic.product_ids)))
    for q in qs:
        r = run[q]
        assert len(r.ids) == 50 == len(set(r.ids)) and all(p in synthetic.catalog for p in r.ids)
        assert np.all(np.diff(r.scores) <= 0) and np.all(np.abs(r.scores) <= 1 + 1e-6)
        for i in range(49):  # equal scores are ordered by the seeded hash
            if r.scores[i] == r.scores[i + 1]:
                assert keys[r.ids[i]] < keys[r.ids[i + 1]]
    assert len(flat.search(qs, k=10_000)[next(iter(qs))].ids) == len(synthetic.catalog)
    assert flat.search({}, k=10) == {}


def test_flat_equals_numpy_brute_force(flat, synthetic):
    qs = _queries(synthetic)
    run = flat.search(qs, k=40)
    qv = flat.encode_queries(list(qs.values())).astype(np.float64)
    pids = synthetic.product_ids
    keys = tiebreak_keys(pids)
    # (1) exact: the retriever's own catalog vectors, laid out in catalog order
    row = {p: i for i, p in enumerate(flat.product_ids)}
    emb = flat.embeddings[[row[p] for p in pids]].astype(np.float64)
    # (2) independent: the encoder called directly on the titles in catalog order
    model = load_encoder(None)
    emb2 = model.encode(synthetic.titles, batch_size=32, normalize_embeddings=True)
    emb2 = emb2.astype(np.float64)
    for i, q in enumerate(qs):
        s = emb @ qv[i]
        idx = top_k(s, 40, keys)
        assert run[q].ids == [pids[j] for j in idx]
        np.testing.assert_allclose(run[q].scores, s[idx], rtol=0, atol=1e-12)
        s2 = np.sort(emb2 @ qv[i])[::-1][:40]
        np.testing.assert_allclose(run[q].scores, s2, rtol=0, atol=1e-5)


def test_ivf_probing_every_list_equals_flat(flat, synthetic, cache_dir):
    ivf = DenseRetriever(index="ivf", nlist=8, nprobe=8, cache_dir=cache_dir).fit(
        synthetic, progress=False)
    assert ivf.index.nlist == 8 and ivf.index.nprobe == 8
    qs = _queries(synthetic)
    _same(flat.search(qs, 60), ivf.search(qs, 60))
    ivf.configure(nprobe=1)  # one list: fewer candidates, still a valid ranking
    assert ivf.index.nprobe == 1 and ivf.cfg.nprobe == 1
    run = ivf.search(qs, 60)
    assert all(0 < len(run[q].ids) <= 60 and np.all(np.diff(run[q].scores) <= 0) for q in qs)
    assert DenseRetriever(index="ivf").cfg.nlist is None
    from genret.dense import _ivf_nlist
    assert _ivf_nlist(54_667, None) == 935 and _ivf_nlist(400, None) == 10


def test_ties_at_the_k_boundary_follow_the_hash(synthetic, cache_dir):
    """30 products with one title: exact ties. With extra=2 Faiss proposes k+2 of them;
    the search must widen and return the k with the smallest tie-break keys."""
    catalog = {f"dup{i:02d}": "Acme cordless Drill M100A" for i in range(30)}
    catalog.update(list(synthetic.catalog.items())[:100])
    ds = Dataset("ties", catalog, {}, {}, 2.5, {})
    r = DenseRetriever(extra=2, cache_dir=cache_dir).fit(ds, progress=False)
    run = r.search({"q": "acme cordless drill m100a"}, k=5)
    dups = sorted((p for p in catalog if p.startswith("dup")),
                  key=lambda p: tiebreak_keys([p])[0])
    assert run["q"].ids == dups[:5]
    assert len(set(run["q"].scores.tolist())) == 1
    run = r.search({"q": "acme cordless drill m100a"}, k=40)  # all 30 first, then the rest
    assert run["q"].ids[:30] == dups and not run["q"].ids[30].startswith("dup")


def test_results_do_not_depend_on_catalog_order(flat, synthetic, cache_dir):
    shuffled = _shuffled(synthetic)
    qs = _queries(synthetic)
    _same(flat.search(qs, 100), DenseRetriever(cache_dir=cache_dir).fit(shuffled, progress=False)
          .search(qs, 100))
    # IVF: the clustering too must not see catalog order (few lists probed)
    cfg = dict(index="ivf", nlist=10, nprobe=2, cache_dir=cache_dir)
    a = DenseRetriever(**cfg).fit(synthetic, progress=False)
    b = DenseRetriever(**cfg).fit(shuffled, progress=False)
    _same(a.search(qs, 100), b.search(qs, 100))


def test_embedding_cache_is_keyed_by_encoder_and_titles(synthetic, tmp_path):
    cache = tmp_path / "c"
    small = Dataset("s", dict(list(synthetic.catalog.items())[:60]), {}, {}, 2.5, {})
    a = DenseRetriever(cache_dir=str(cache)).fit(small, progress=False)
    assert len(list(cache.glob("*.npy"))) == 1
    b = DenseRetriever(cache_dir=str(cache)).fit(_shuffled(small), progress=False)
    assert len(list(cache.glob("*.npy"))) == 1  # same titles, other order: a hit
    assert a.product_ids == b.product_ids and np.array_equal(a.embeddings, b.embeddings)
    other = dict(small.catalog)
    other[next(iter(other))] += " extra words"
    DenseRetriever(cache_dir=str(cache)).fit(Dataset("x", other, {}, {}, 2.5, {}), progress=False)
    assert len(list(cache.glob("*.npy"))) == 2
    # fit-time overrides are accepted (out_dir holds training state: none without train)
    DenseRetriever(cache_dir=str(cache)).fit(small, progress=False, encode_max_seq_len=8,
                                             out_dir=str(tmp_path / "work"))
    assert len(list(cache.glob("*.npy"))) == 3 and not (tmp_path / "work").exists()
    with pytest.raises(ValueError, match="dense: unknown setting.*encode_max_seqlen; valid: .*encode_max_seq_len"):
        DenseRetriever(cache_dir=str(cache)).fit(small, encode_max_seqlen=8)


@pytest.mark.parametrize("index", ["flat", "ivf"])
def test_save_load_round_trip(flat, synthetic, cache_dir, tmp_path, index):
    r = flat if index == "flat" else DenseRetriever(
        index="ivf", nlist=10, nprobe=3, cache_dir=cache_dir).fit(synthetic, progress=False)
    r.save(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"manifest.json", "index.faiss", "product_ids.json"} <= files and "embeddings.npy" not in files
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["kind"] == "dense" and manifest["n_products"] == len(synthetic.catalog)
    assert manifest["encoder"]["name"] == "all-MiniLM-L6-v2" and manifest["index_type"] == index
    back = load_retriever(tmp_path / "m")
    assert isinstance(back, DenseRetriever) and back.cfg.nprobe == r.cfg.nprobe
    assert np.array_equal(back.embeddings, r.embeddings)  # the vectors, exactly, from the index alone
    qs = _queries(synthetic)
    _same(r.search(qs, 30), back.search(qs, 30))


def test_older_saves_with_embeddings_npy_still_load(flat, synthetic, tmp_path, monkeypatch):
    """Saves before the vectors were stored once held them twice (embeddings.npy too)."""
    import faiss

    write = faiss.write_index

    def write_both(index, name):  # what save() wrote then
        write(index, name)
        np.save(Path(name).with_name("embeddings.npy"), flat.embeddings)

    monkeypatch.setattr(faiss, "write_index", write_both)
    flat.save(tmp_path / "old")
    monkeypatch.undo()
    assert "embeddings.npy" in json.loads((tmp_path / "old" / "manifest.json").read_text())["files"]
    back = load_retriever(tmp_path / "old")
    qs = _queries(synthetic)
    _same(flat.search(qs, 30), back.search(qs, 30))


def test_index_factory_builds_the_documented_indexes(flat, synthetic, cache_dir):
    import faiss

    assert isinstance(flat.index, faiss.IndexFlat) and flat.index.metric_type == faiss.METRIC_INNER_PRODUCT
    ivf = DenseRetriever(index="ivf", nlist=6, nprobe=2, cache_dir=cache_dir).fit(synthetic, progress=False)
    assert isinstance(ivf.index, faiss.IndexIVFFlat) and ivf.index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert ivf.index.nlist == 6 and ivf.index.nprobe == 2 and ivf.index.cp.spherical


def test_finetune_improves_train_recall(synthetic, cache_dir, tmp_path):
    train = synthetic.split("train")
    qs = {q: synthetic.queries[q] for q in train}
    zs = DenseRetriever(cache_dir=cache_dir).fit(synthetic, progress=False)
    ft = DenseRetriever(train=True, batch_size=16, max_steps=14, lr=5e-5, seed=0,
                        core_term_negatives=1).fit(synthetic, progress=False)
    before = evaluate(zs.search(qs, 100), synthetic, train, buckets=False)["overall"]
    after = evaluate(ft.search(qs, 100), synthetic, train, buckets=False)["overall"]
    assert after["R@10"] > before["R@10"] and after["MRR@10"] > before["MRR@10"]
    assert ft.training["steps"] == 13 and ft.training["with_core_term_negatives"] > 0
    # the fine-tuned encoder travels with the index, as safetensors (no pickle)
    ft.save(tmp_path / "ft")
    enc = tmp_path / "ft" / "encoder"
    assert list(enc.rglob("*.safetensors")) and not list(enc.rglob("*.bin"))
    back = load_retriever(tmp_path / "ft")
    assert back.identity["fine_tuned"] and back.training["steps"] == 13
    test_q = _queries(synthetic)
    _same(ft.search(test_q, 20), back.search(test_q, 20))
    ivf = back.with_index("ivf", nlist=4, nprobe=4)  # re-indexing a loaded model: no re-encoding
    ivf.save(tmp_path / "ft-ivf")
    _same(ft.search(test_q, 20), load_retriever(tmp_path / "ft-ivf").search(test_q, 20))


def test_training_uses_train_queries_and_masks_false_negatives(synthetic):
    import torch

    ex = build_examples(synthetic, DenseConfig(train=True, core_term_negatives=1))
    assert {e.qid for e in ex} == set(synthetic.split("train"))
    assert sum(bool(e.core_negatives) for e in ex) > len(ex) // 2
    for e in ex:
        rel = synthetic.relevant(e.qid)
        assert set(e.positives) == set(rel) and not set(e.labelled_negatives) & set(rel)
        assert not set(e.core_negatives) & set(rel)
        if e.core_negatives:
            assert e.query_minus_core and e.core not in e.query_minus_core.split()
    # two queries sharing a positive: its column is masked for the other query
    loss = DenseContrastiveLoss(scale=20.0)
    q = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    cand = torch.cat([q, q])
    mask = torch.tensor([[False, True, False, False], [True, False, False, False]])
    out = loss(q, cand, mask)
    assert set(out) == {"q2d", "loss"} and torch.isfinite(out["loss"])
    # seed 003's (q', d) pairs: the core-term-deleted queries are negatives for the titles
    out = DenseContrastiveLoss(scale=20.0, core_query_weight=0.5)(
        q, cand, mask, qprime=-q, d2q_mask=torch.zeros(2, 4, dtype=torch.bool))
    assert set(out) == {"q2d", "d2q", "loss"}
    assert float(out["loss"]) == pytest.approx(float(out["q2d"] + 0.5 * out["d2q"]))


def test_core_term():
    assert core_term("mats for trailer") == "mats"
    assert core_term("cordless drill") == "drill"
    assert core_term("white kitchen faucet 2 pack") == "faucet"
    assert core_term("drill") is None  # nothing would be left
    assert core_term("ryobi drill bits", ["Ryobi 20-Piece Drill Set"]) == "drill"
    assert delete_term("Cordless Drill drill kit", "drill") == "cordless kit"


def test_bad_input(flat, synthetic, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        flat.search({"q": "   "})
    with pytest.raises(ValueError, match="positive integer"):
        flat.search({"q": "drill"}, k=0)
    with pytest.raises(RuntimeError, match="before fit"):
        DenseRetriever().search({"q": "drill"})
    with pytest.raises(ValueError, match="index"):
        DenseRetriever(index="hnsw")
    with pytest.raises(ValueError, match="unknown dense option"):
        DenseRetriever(nprobes=8)
    with pytest.raises(ValueError, match="not a directory"):
        DenseRetriever(encoder=str(tmp_path / "nope")).fit(synthetic, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="no manifest"):
        DenseRetriever.load(tmp_path / "empty")
    make_retriever("bm25").fit(synthetic).save(tmp_path / "bm25")
    with pytest.raises(ArtifactError, match="'bm25' artifact, not 'dense'"):
        DenseRetriever.load(tmp_path / "bm25")
    flat.save(tmp_path / "d")
    with open(tmp_path / "d" / "index.faiss", "r+b") as f:
        f.truncate(1000)
    with pytest.raises(ArtifactError, match="truncated"):
        load_retriever(tmp_path / "d")
