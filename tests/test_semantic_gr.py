"""Semantic-ID generative retrieval: the trie constraint against brute force, a tiny
end-to-end run (indexing, validity of every decoded ID, save/load, DPO, LoRA with trainable
ID tokens) and the `genret sid build|report` / `train --mode semantic-id` CLI."""

import json

import numpy as np
import pytest
import torch

from genret.decoding import ConstraintLogitsProcessor, TrieConstraint
from semantic_id import PrefixTrie

EOS_ID = 5  # the tokenizer's EOS in the synthetic mappings below


# ----------------------------------------------------------------------------- constraint

def _random_ids(rng, n, vocab, max_len):
    """Unique, prefix-free variable-length IDs over tokens 1..vocab-1, each ending with 0."""
    seen, out = set(), []
    while len(out) < n:
        seq = tuple(rng.integers(1, vocab, size=rng.integers(1, max_len + 1)).tolist()) + (0,)
        if seq not in seen:
            seen.add(seq)
            out.append(seq)
    return out


def _brute_allowed(seqs, to_tok, prefix_trie_tokens):
    k = len(prefix_trie_tokens)
    return {int(to_tok[s[k]]) for s in seqs if len(s) > k and list(s[:k]) == list(prefix_trie_tokens)}


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mapping", ["offset", "array"])
def test_trie_constraint_matches_brute_force(seed, mapping):
    rng = np.random.default_rng(seed)
    vocab = 7
    seqs = _random_ids(rng, 40, vocab, 4)
    trie = PrefixTrie.build([np.array(s) for s in seqs])
    if mapping == "offset":
        arg, to_tok = 100, {t: 100 + t for t in range(vocab)}
    else:
        perm = rng.permutation(np.arange(200, 200 + vocab))
        arg, to_tok = perm, {t: int(perm[t]) for t in range(vocab)}
    to_tok[0] = EOS_ID  # the end-of-ID token is the tokenizer's EOS
    c = TrieConstraint(trie, arg, EOS_ID)
    # every prefix of every ID, plus random (mostly invalid) prefixes
    prefixes = {s[:k] for s in seqs for k in range(len(s) + 1)}
    prefixes |= {tuple(rng.integers(0, vocab, size=rng.integers(0, 4)).tolist()) for _ in range(60)}
    prefixes = sorted(prefixes)
    generated = [[to_tok[t] for t in p] for p in prefixes]
    for p, got in zip(prefixes, c.allowed(generated)):
        assert set(got.tolist()) == _brute_allowed(seqs, to_tok, p), p
    # a finished ID maps back to exactly its item, with or without the trailing EOS
    for i, s in enumerate(seqs):
        gen = [to_tok[t] for t in s]
        assert c.items(gen).tolist() == [i]
        assert c.items(gen[:-1]).tolist() == [i]
    assert len(c.items([999])) == 0


def test_trie_constraint_on_pruned_semantic_ids():
    """Adaptive pruning gives variable-length IDs; every prefix's allowed set is exact and
    the end-of-ID token is EOS."""
    from semantic_id import SemanticIDConfig, build_from_embeddings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    x[:150, 0] += 4.0  # a concentrated region, so pruning has something to drop
    cfg = SemanticIDConfig(levels=3, codebook=8, prune="adaptive", top_k=3, kmeans_iters=5)
    sids = build_from_embeddings([f"p{i}" for i in range(300)], x, cfg)
    assert len(set(sids.lengths.tolist())) > 1, "expected variable-length IDs"
    offset = 1000
    c = TrieConstraint(sids.trie, offset, EOS_ID)
    seqs = [tuple(s.tolist()) for s in sids.ids]
    to_tok = {t: offset + t for t in range(sids.space.vocab_size)}
    to_tok[0] = EOS_ID
    prefixes = sorted({s[:k] for s in seqs for k in range(len(s))})
    for p, got in zip(prefixes, c.allowed([[to_tok[t] for t in p] for p in prefixes])):
        assert set(got.tolist()) == _brute_allowed(seqs, to_tok, p)
    for i, s in enumerate(seqs):
        assert c.items([to_tok[t] for t in s]).tolist() == [i]


def test_trie_constraint_masks_logits():
    trie = PrefixTrie.build([np.array([1, 2, 0]), np.array([1, 3, 0]), np.array([2, 0])])
    c = TrieConstraint(trie, 10, EOS_ID)  # ID token t -> tokenizer id 10 + t, end -> EOS
    proc = ConstraintLogitsProcessor(c, prompt_len=2, fallback_id=EOS_ID)
    scores = torch.zeros((1, 20)).log_softmax(-1)
    for generated, want in (([], [11, 12]), ([11], [12, 13]), ([11, 12], [EOS_ID]), ([12, 15], [EOS_ID])):
        out = proc(torch.tensor([[7, 7] + generated]), scores)
        assert torch.isfinite(out[0]).nonzero().flatten().tolist() == want, generated


def test_bad_mapping_is_refused():
    trie = PrefixTrie.build([np.array([1, 2, 0])])
    with pytest.raises(ValueError, match="covers"):
        TrieConstraint(trie, np.array([0, 1]), EOS_ID)
    with pytest.raises(ValueError, match="distinct"):
        TrieConstraint(trie, np.array([0, 9, 9]), EOS_ID)


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def tiny():
    from genret.data import synthetic_dataset

    return synthetic_dataset(n_products=150, n_queries=120)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    from conftest import write_tsv_dataset

    return write_tsv_dataset(tiny, tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="module")
def sid_dir(tmp_path_factory, tiny_dir):
    """`genret sid build` on the tiny TSV dataset: 3 levels x 8 codes."""
    from genret.cli import main

    out = tmp_path_factory.mktemp("sid") / "ids"
    assert main(["sid", "build", "--data", str(tiny_dir), "--threshold", "2.5", "--out", str(out),
                 "--levels", "3", "--codebook", "8", "--quiet"]) == 0
    return out


TRAIN = {"epochs": 20, "full": True, "progress": False, "batch_size": 8, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny, sid_dir):
    from genret.semantic import SemanticIDRetriever

    work = tmp_path_factory.mktemp("gr-sid")
    r = SemanticIDRetriever(stage="sft", sid=str(sid_dir), preset="tiny", num_beams=10,
                            train=TRAIN).fit(tiny, out_dir=str(work / "work"))
    r.save(work / "sft")
    return r, work / "sft"


def test_sid_cli_build_and_report(sid_dir, capsys):
    from genret.cli import main

    assert (sid_dir / "sandglass.png").stat().st_size > 1000
    assert main(["sid", "report", str(sid_dir), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["n_items"] == 150 and len(rep["levels"]) == 3
    for lv in rep["levels"]:
        assert set(lv) >= {"level", "entropy", "gini", "top1_share", "top10_share", "utilization"}
        assert 0 <= lv["entropy"] <= 1 and 0 < lv["top1_share"] <= lv["top10_share"] <= 1
    assert 0 <= rep["collision_rate"] <= 1 and 3 <= rep["mean_length"] <= 4
    assert main(["sid", "report", str(sid_dir)]) == 0
    assert "| level | entropy | gini |" in capsys.readouterr().out
    assert main(["sid", "report", str(sid_dir / "missing")]) == 2  # a clear error, no traceback


def test_indexed_products_are_retrieved_from_their_titles(trained, tiny):
    from genret.semantic import TITLE_PROMPT

    r, _ = trained
    run = r.search(dict(tiny.catalog), k=10, prompt=TITLE_PROMPT)
    hit10 = np.mean([p in run[p].ids for p in tiny.catalog])
    chance = 10 / len(tiny.catalog)
    # measured 0.55 (seed 0); chance is 0.067
    assert hit10 >= 3 * chance, f"Hit@10 from titles {hit10:.3f} vs chance {chance:.3f}"


def test_every_decoded_id_is_valid(trained, tiny):
    from genret.semantic import TITLE_PROMPT

    r, _ = trained
    texts = [tiny.queries[q] for q in tiny.split("all")[:30]]
    n = 0
    for prompt, batch in ((None, texts), (TITLE_PROMPT, tiny.titles[:20])):
        hyps = r.decode(batch, **({"prompt": prompt} if prompt else {}))
        for hs in hyps:
            beams, dropped = r.beams(hs)
            assert dropped == 0 and len(beams) == r.cfg.num_beams
            for h in hs:  # every beam spells one complete ID in the trie
                items = r.constraint.items(h.tokens)
                assert len(items) == 1
                assert r.sids.ids[items[0]][:-1].tolist() == r.constraint.to_trie(h.tokens).tolist()
                n += 1
    assert n == 50 * r.cfg.num_beams


def test_max_new_tokens_is_a_search_setting(trained, tiny):
    """configure(max_new_tokens=...) bounds the decode: one step spells no complete ID."""
    r, _ = trained
    query = [tiny.queries[tiny.split("test")[0]]]
    try:
        r.configure(max_new_tokens=1)
        hyps = r.decode(query)[0]
        assert hyps and all(len(h.tokens) == 1 for h in hyps) and r.beams(hyps)[0] == []
    finally:
        r.configure(max_new_tokens=None)  # the longest ID + 1 again
    assert len(r.beams(r.decode(query)[0])[0]) == r.cfg.num_beams


def test_save_load_round_trip(trained, tiny):
    from genret.retriever import load_retriever

    r, path = trained
    back = load_retriever(path)
    qs = {q: tiny.queries[q] for q in tiny.split("test")[:10]}
    a, b = r.search(qs, 10), back.search(qs, 10)
    assert all(a[q].ids == b[q].ids and np.allclose(a[q].scores, b[q].scores) for q in qs)
    # ID tokens keep their tokenizer ids, and encode as single special tokens
    assert np.array_equal(back.token_map, r.token_map)
    tokens = r.sids.space.tokens()[1:]
    assert back.tokenizer.convert_tokens_to_ids(tokens) == r.token_map[1:].tolist()
    enc = back.tokenizer(r.id_text(0), add_special_tokens=False)["input_ids"]
    assert enc == r.id_token_ids(0)
    assert back.info["stage"] == "sft" and back.info["sft_examples"] > len(tiny.catalog)
    detail = back.explain(tiny.queries[tiny.split("test")[0]], k=5)
    assert detail["beams"] and detail["ids"] and len(detail["products"]) == 5


def test_tampered_token_map_is_refused(trained, foreign_tokenizer_copy):
    from genret.artifact import ArtifactError
    from genret.retriever import load_retriever

    with pytest.raises(ArtifactError, match="tokenizer"):
        load_retriever(foreign_tokenizer_copy(trained[1]))


def test_other_catalog_or_pruning_is_refused(trained, tiny, tmp_path):
    from genret.data import synthetic_dataset
    from genret.semantic import SemanticIDRetriever

    _, path = trained
    other = synthetic_dataset(n_products=60, n_queries=40, seed=1)
    with pytest.raises(ValueError, match="another catalog"):
        SemanticIDRetriever(stage="dpo", init=str(path), preset="tiny").fit(other, out_dir=str(tmp_path))
    with pytest.raises(ValueError, match="prune='none'"):  # DPO on a model trained with other IDs
        SemanticIDRetriever(stage="dpo", init=str(path), prune="drop").fit(tiny, out_dir=str(tmp_path))


def test_dpo_mines_pairs_from_own_beams(trained, tiny, tmp_path):
    from genret.semantic import SemanticIDRetriever

    _, path = trained
    r = SemanticIDRetriever(stage="dpo", init=str(path), preset="tiny", num_beams=10, dpo_queries=30,
                            train={**TRAIN, "dpo_epochs": 1}).fit(tiny, out_dir=str(tmp_path))
    assert r.info["stage"] == "dpo" and r.info["sft_examples"] > 0
    assert 0 < r.info["dpo_pairs"] <= 30 and r.info["dpo_queries_mined"] == 30
    assert 0 <= r.info["dpo_chosen_from_beams"] <= r.info["dpo_pairs"]
    run = r.search({"q": tiny.queries[tiny.split("test")[0]]}, 5)
    assert len(run["q"].ids) == 5


def test_dpo_pair_rules(trained, tiny):
    """"all" pairs every query with a wrong beam (the gold ID when no beam is right);
    "mistakes" only a query whose top beam is wrong and a lower beam right."""
    import dataclasses

    r, _ = trained
    hyps = r.decode([tiny.queries[tiny.split("train")[0]]])[0]
    beams = r.beams(hyps)[0]
    ids = [r.sids.item_ids[i] for i, _, _ in beams]
    text = [r.id_text(i) for i, _, _ in beams]
    outside = next(p for p in r.sids.item_ids if p not in ids)
    rules = {rule: dataclasses.replace(r.cfg, dpo_pairs=rule) for rule in ("all", "mistakes")}
    cases = {"top right": {ids[0]: 3}, "third right": {ids[2]: 3}, "none right": {outside: 3}}
    want = {("all", "top right"): (text[0], text[1], True), ("all", "third right"): (text[2], text[0], True),
            ("all", "none right"): (r.id_text(r.index[outside]), text[0], False),
            ("mistakes", "top right"): None, ("mistakes", "third right"): (text[2], text[0], True),
            ("mistakes", "none right"): None}
    try:
        for (rule, case), pair in want.items():
            r.cfg = rules[rule]
            assert r._pair(hyps, cases[case]) == pair, (rule, case)
    finally:
        r.cfg = rules["all"]
    with pytest.raises(ValueError, match="dpo_pairs must be one of mistakes, all"):
        dataclasses.replace(r.cfg, dpo_pairs="best")


def test_dpo_sft_weight_raises_the_chosen_ids_likelihood(trained, tiny, tmp_path):
    """dpo_sft_weight adds the chosen answer's NLL (RPO): the chosen IDs' log-probability
    gains more than under plain DPO from the same start on the same pairs. (Each run
    trains a deep copy of the SFT model: that needs training.sft to return a model whose
    copies run their own weights.)"""
    import copy

    from genret.semantic import TITLE_PROMPT
    from genret.training import TrainConfig, dpo

    r, _ = trained
    # titles of items 0-7; chosen / rejected = IDs of other items (their own IDs are memorised)
    prompts = [TITLE_PROMPT.format(title=tiny.catalog[r.sids.item_ids[i]]) for i in range(8)]
    chosen, rejected = range(8, 16), range(16, 24)
    pairs = [{"prompt": p, "chosen": r.id_text(i), "rejected": r.id_text(j)}
             for p, i, j in zip(prompts, chosen, rejected)]

    def chosen_logp(model) -> float:
        total = 0.0
        for p, i in zip(prompts, chosen):
            ids = r.tokenizer(p, add_special_tokens=False)["input_ids"]
            target = r.id_token_ids(i)
            with torch.no_grad():
                logits = model(torch.tensor([ids + target])).logits[0, len(ids) - 1:-1]
            total += logits.log_softmax(-1)[torch.arange(len(target)), torch.tensor(target)].sum().item()
        return total

    start = chosen_logp(r.model)
    gain = {}
    for w in (0.0, 5.0):
        cfg = TrainConfig(max_steps=6, dpo_batch_size=8, dpo_learning_rate=5e-3, dpo_sft_weight=w, progress=False)
        gain[w] = chosen_logp(dpo(copy.deepcopy(r.model), r.tokenizer, pairs, tmp_path / f"w{w}", cfg)) - start
    assert gain[5.0] > 0 and gain[5.0] > gain[0.0] + 0.5, gain
    with pytest.raises(ValueError, match="dpo_sft_weight must be >= 0"):
        TrainConfig(dpo_sft_weight=-1)  # refused with the config, before any decoding


def test_lora_trains_only_id_token_embeddings(tiny, sid_dir, tmp_path):
    """LoRA + trainable_token_indices: the ID-token rows move, every other row but the
    markers' stays."""
    from genret.semantic import SemanticIDRetriever

    r = SemanticIDRetriever(stage="sft", sid=str(sid_dir), preset="tiny", num_beams=4,
                            train={"max_steps": 8, "progress": False, "batch_size": 8, "learning_rate": 1e-2})
    r._load_start(tiny)
    r.add_id_tokens()
    before = r.model.get_input_embeddings().weight.detach().clone()
    r.fit(tiny, out_dir=str(tmp_path))
    after = r.model.get_input_embeddings().weight.detach()
    from genret.backbone import special_ids

    ids = torch.as_tensor(r.token_map[1:])
    other = torch.ones(len(after), dtype=torch.bool)
    other[ids] = False
    sp = special_ids(r.tokenizer)
    other[[sp.sep, sp.eos, sp.query, sp.title, sp.id]] = False  # the markers train under LoRA too
    assert torch.equal(after[other], before[other])
    assert (after[ids] - before[ids]).norm(dim=1).min() > 0
    assert r.model.lm_head.weight.data_ptr() == r.model.get_input_embeddings().weight.data_ptr()


def test_content_init_puts_id_tokens_at_their_items_titles(tiny, sid_dir):
    """id_init="content": an ID token's row is the mean title embedding of the items whose
    ID holds it (rescaled to the mean norm of the old rows); a token no item holds gets
    the mean row."""
    from genret.semantic import SemanticIDRetriever

    r = SemanticIDRetriever(stage="sft", sid=str(sid_dir), preset="tiny", id_init="content",
                            train={"full": True, "progress": False})
    r._load_start(tiny)
    old = r.model.get_input_embeddings().weight.detach().clone()
    titles = [tiny.catalog[p] for p in r.sids.item_ids]
    new = r.add_id_tokens(titles)
    emb = r.model.get_input_embeddings().weight.detach()
    scale = old.norm(dim=1).mean()
    title_vec = [old[r.tokenizer(t, add_special_tokens=False)["input_ids"]].mean(0) for t in titles]
    holders = {}
    for i, ids in enumerate(r.sids.ids):
        for t in ids[:-1].tolist():
            holders.setdefault(t, []).append(i)
    checked = 0
    for t in range(1, len(r.token_map)):
        row = emb[r.token_map[t]]
        if t in holders:
            want = torch.stack([title_vec[i] for i in holders[t]]).mean(0)
            torch.testing.assert_close(row, want * scale / want.norm(), rtol=1e-4, atol=1e-5)
            checked += 1
        else:
            torch.testing.assert_close(row, old.mean(0), rtol=1e-4, atol=1e-5)
    assert checked == len(holders) > 10 and len(new) == len(r.token_map) - 1
    # distinct clusters start apart: level-1 tokens are not all the same row
    l1 = [r.token_map[t] for t in holders if r.sids.space.pair(t)[0] == 1]
    assert torch.pdist(emb[l1]).min() > 0


def test_registry_rows():
    from genret.retriever import REGISTRY, make_retriever
    from genret.semantic import SemanticIDRetriever

    for name in ("gr-sid", "gr-sid-sft", "gr-sid-dpo", "gr-sid-drop-sft", "gr-sid-drop-dpo",
                 "gr-sid-adaptive-sft", "gr-sid-adaptive-dpo", "semantic-id"):
        assert REGISTRY[name][1] == "SemanticIDRetriever"
    r = make_retriever("gr-sid-adaptive-dpo")
    assert isinstance(r, SemanticIDRetriever) and r.stage == "dpo" and r.cfg.prune == "adaptive"
    assert (r.cfg.levels, r.cfg.codebook, r.cfg.quantizer, r.cfg.num_beams) == (3, 256, "rkmeans", 20)
    with pytest.raises(ValueError, match="prune"):
        make_retriever("gr-sid", prune="sometimes")


def test_cli_train_search_eval(tiny_dir, sid_dir, tmp_path, capsys):
    from genret.cli import main

    out = tmp_path / "m"
    assert main(["train", "--mode", "semantic-id", "--sid", str(sid_dir), "--data", str(tiny_dir),
                 "--threshold", "2.5", "--out", str(out), "--preset", "tiny", "--full",
                 "--set", "num_beams=4", "--set", "prune=drop",
                 "--set", "train.max_steps=5", "--set", "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["search", "--model", str(out), "--k", "3", "--json", "cordless", "drill"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert len(detail["beams"]) == 4 and len(detail["ids"]) == 4 and len(detail["products"]) == 3
    # drop pruning removed one level: every ID is 2 codes (+ a dedup code where needed)
    assert all(2 <= b["id"].count("<") <= 3 for b in detail["beams"])
    assert main(["eval", "--retriever", "semantic-id", "--model", str(out), "--data", str(tiny_dir),
                 "--threshold", "2.5", "--split", "dev", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert 0 <= res["R@10"] <= res["R@100"] <= 1
