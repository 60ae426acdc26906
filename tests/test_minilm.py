"""The MiniLM prefix-LM backbone: the mask it promises, with a 2-layer random-init
network and MiniLM's own tokenizer (the full MiniLM only in the weight-loading test)."""

import pytest
import torch

from genret.minilm import PROMPT_ENDS, PrefixBertLM, from_minilm, minilm_tokenizer, prefix_lengths
from tiny import tiny_minilm as tiny  # the 2-layer random-init prefix-LM of these tests


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_tokenizer_adds_nothing_and_knows_the_markers(tok):
    got = ids(tok, "<|query|> Cordless Drill<|title|>")
    assert tok.convert_ids_to_tokens(got) == ["<|query|>", "cord", "##less", "drill", "<|title|>"]
    assert tok.eos_token == "[SEP]" and tok.pad_token == "[PAD]"


def test_prefix_lengths_end_at_the_last_prompt_marker():
    x = torch.tensor([[1, 7, 2, 9, 5], [7, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert prefix_lengths(x, [7, 9]).tolist() == [4, 1, 0]


def test_prompt_is_read_both_ways_and_targets_causally(tok):
    m = tiny(tok)
    p, p2 = ids(tok, "<|query|> cordless drill<|title|>"), ids(tok, "<|query|> cordless saw<|title|>")
    c = ids(tok, " dewalt cordless drill")
    with torch.no_grad():
        first = lambda seq: m(torch.tensor([seq])).logits[0]  # noqa: E731
        assert (first(p + c)[1] - first(p2 + c)[1]).abs().max() > 1e-4  # an early prompt token sees a later one
        c2 = c[:-1] + [ids(tok, "saw")[0]]
        assert torch.allclose(first(p + c)[len(p)], first(p + c2)[len(p)])  # targets never see the future
        hidden = lambda seq: m.base_model(torch.tensor([seq])).last_hidden_state[0, 1]  # noqa: E731
        assert (hidden(p + c) - hidden(p2 + c)).abs().max() > 1e-4  # trl's fused loss calls the base model
    causal = tiny(tok, prefix_lm=False)
    with torch.no_grad():
        assert torch.allclose(causal(torch.tensor([p + c])).logits[0, 1], causal(torch.tensor([p2 + c])).logits[0, 1])


def test_pooled_prompt_end_is_the_mean_of_the_prompt_states(tok):
    """pool_prompt: the prompt end's output state (the one that scores the first target
    token) is the mean of the prompt's states; every other state, and so the targets' own
    scores given their context, is the plain prefix-LM's; padding is not averaged."""
    plain, pooled = tiny(tok), tiny(tok, pool_prompt=True)
    p, c = ids(tok, "<|query|> cordless drill<|title|>"), ids(tok, " dewalt drill")
    x = torch.tensor([p + c])
    with torch.no_grad():
        h, hp = plain.base_model(x).last_hidden_state[0], pooled.base_model(x).last_hidden_state[0]
        assert torch.allclose(hp[len(p) - 1], h[:len(p)].mean(0), atol=1e-6)
        keep = [i for i in range(len(p + c)) if i != len(p) - 1]
        assert torch.allclose(hp[keep], h[keep], atol=1e-6)
        assert torch.allclose(pooled(x).logits[0, len(p) - 1], pooled.lm_head(hp[len(p) - 1]), atol=1e-5)
        xp, mask = torch.tensor([[tok.pad_token_id] * 3 + p + c]), torch.tensor([[0] * 3 + [1] * len(p + c)])
        hpad = plain.base_model(xp, attention_mask=mask).last_hidden_state[0]
        padded = pooled.base_model(xp, attention_mask=mask).last_hidden_state[0]
        assert torch.allclose(padded[3 + len(p) - 1], hpad[3:3 + len(p)].mean(0), atol=1e-6)
    assert pooled.config.pool_prompt and not plain.config.pool_prompt


@pytest.mark.parametrize("pool_prompt", [False, True])
def test_cached_decoding_equals_one_full_forward(tok, pool_prompt):
    m = tiny(tok, pool_prompt=pool_prompt)
    p, c = ids(tok, "<|query|> brushed nickel faucet<|title|>"), ids(tok, " moen faucet in brushed nickel")
    with torch.no_grad():
        full = m(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
        out = m(torch.tensor([p]), use_cache=True)
        steps = [out.logits[0, -1]]
        for t in c[:-1]:
            out = m(torch.tensor([[t]]), cache=out.cache, use_cache=True)
            steps.append(out.logits[0, -1])
    assert torch.allclose(full, torch.stack(steps), atol=1e-5)


@pytest.mark.parametrize("pool_prompt", [False, True])
def test_left_padding_does_not_change_generation(tok, pool_prompt):
    m = tiny(tok, pool_prompt=pool_prompt)
    prompts = ["<|query|> drill<|title|>", "<|query|> a much longer query about faucets<|title|>"]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        kw = dict(max_new_tokens=3, do_sample=False, output_scores=True, return_dict_in_generate=True,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        enc = lambda xs: tok(xs, return_tensors="pt", padding=True, add_special_tokens=False,  # noqa: E731
                             return_token_type_ids=False)
        with torch.no_grad():
            both, alone = m.generate(**enc(prompts), **kw), m.generate(**enc(prompts[:1]), **kw)
    finally:
        tok.padding_side = side
    assert torch.allclose(both.scores[0][0], alone.scores[0][0], atol=1e-5)


def test_save_and_load_round_trip(tok, tmp_path):
    from transformers import AutoModelForCausalLM

    m = tiny(tok)
    m.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(back, PrefixBertLM) and back.config.prefix_end_ids == m.config.prefix_end_ids
    x = torch.tensor([ids(tok, "<|query|> drill<|title|> dewalt")])
    with torch.no_grad():
        assert torch.allclose(m(x).logits, back(x).logits, atol=1e-6)
    assert back.lm_head.weight.data_ptr() == back.get_input_embeddings().weight.data_ptr()


def test_pretrained_weights_are_minilms(tok):
    from transformers import BertModel

    from genret.minilm import minilm_path

    m = from_minilm(tok.convert_tokens_to_ids(PROMPT_ENDS), len(tok))
    ref = BertModel.from_pretrained(minilm_path(), add_pooling_layer=False)
    w = ref.embeddings.word_embeddings.weight
    assert torch.equal(m.get_input_embeddings().weight[: len(w)], w)
    assert torch.equal(m.bert.encoder.layer[5].output.dense.weight, ref.encoder.layer[5].output.dense.weight)
    assert m.get_input_embeddings().weight.shape[0] == len(tok)


# ----------------------------------------------------------------------------- both channels on this backbone

# tiny_backbone (tests/conftest.py): the 2-layer prefix-LM of `tiny`, saved as a genret backbone


def test_a_saved_minilm_backbone_loads_as_it_was(tiny_backbone, tok):
    from genret.backbone import load_backbone, tokenizer_identity

    model, back = load_backbone(tiny_backbone)
    assert isinstance(model, PrefixBertLM) and model.config.prefix_lm
    assert tokenizer_identity(back) == tokenizer_identity(tok) and back.eos_token == "[SEP]"
    text = "dewalt 20v max cordless drill"
    assert back.decode(back(text, add_special_tokens=False)["input_ids"]) == text


LORA = {"max_steps": 30, "progress": False, "batch_size": 16, "learning_rate": 5e-3}


def test_multispan_decodes_word_aligned_catalog_spans_and_round_trips(tiny_backbone, synthetic, tmp_path):
    import numpy as np

    from genret.backbone import word_starts
    from genret.lexical import MultispanRetriever
    from genret.retriever import load_retriever

    from genret.backbone import load_backbone, special_ids

    before = load_backbone(tiny_backbone)[0].get_input_embeddings().weight.detach().clone()
    r = MultispanRetriever(stage="sft", backbone=str(tiny_backbone), num_beams=4, train=LORA)
    r.fit(synthetic, out_dir=str(tmp_path / "work"))  # LoRA (the default) on BERT's projections
    sp = special_ids(r.tokenizer)
    moved = (r.model.get_input_embeddings().weight.detach() - before).norm(dim=1)
    assert moved[[sp.sep, sp.query, sp.title, sp.eos]].min() > 0  # the new marker rows learn under LoRA
    assert moved[before.shape[0] // 2] == 0  # an ordinary word row stays
    titles = [np.array(t) for t in r.title_ids]
    starts = [word_starts(r.tokenizer, t) for t in titles]
    queries = {q: synthetic.queries[q] for q in synthetic.split("test")[:12]}
    n = 0
    for hyps in r.decode(list(queries.values())):
        for h in hyps:
            for span in r.constraint.spans(h.tokens):
                s = np.array(span)
                assert r.index.count(s) > 0
                aligned = [i for t, w in zip(titles, starts) for i in range(len(t) - len(s) + 1)
                           if (t[i:i + len(s)] == s).all() and w[i] and (i + len(s) == len(t) or w[i + len(s)])]
                assert aligned, f"span {r.tokenizer.decode(span)!r} is not word-aligned in any title"
                n += 1
    assert n > 0
    r.save(tmp_path / "ms")
    back = load_retriever(tmp_path / "ms")
    a, b = r.search(queries, 20), back.search(queries, 20)
    assert all(a[q].ids == b[q].ids for q in queries)


def test_semantic_ids_with_lora_train_the_id_rows_and_decode_valid_ids(tiny_backbone, tmp_path):
    from genret.cli import main
    from genret.data import synthetic_dataset
    from genret.semantic import SemanticIDRetriever

    ds = synthetic_dataset(n_products=60, n_queries=40)
    from conftest import write_tsv_dataset

    data = write_tsv_dataset(ds, tmp_path / "data")
    assert main(["sid", "build", "--data", str(data), "--out", str(tmp_path / "sid"), "--levels", "2",
                 "--codebook", "8", "--quiet"]) == 0
    r = SemanticIDRetriever(stage="sft", sid=str(tmp_path / "sid"), backbone=str(tiny_backbone),
                            num_beams=4, train=LORA)
    r._load_start(ds)
    r.add_id_tokens()
    before = r.model.get_input_embeddings().weight.detach().clone()
    r.fit(ds, out_dir=str(tmp_path / "work"))
    after = r.model.get_input_embeddings().weight.detach()
    ids = torch.as_tensor(r.token_map[1:])
    assert (after[ids] - before[ids]).norm(dim=1).min() > 0  # trainable ID-token rows (word_embeddings)
    for hs in r.decode([ds.queries[q] for q in list(ds.queries)[:8]]):
        for h in hs:
            assert len(r.constraint.items(h.tokens)) == 1


def test_registry_rows_on_minilm():
    from genret.retriever import make_retriever

    for name in ("gr-multispan-minilm-sft", "gr-multispan-minilm-dpo", "gr-sid-minilm-sft",
                 "gr-sid-minilm-adaptive-dpo"):
        r = make_retriever(name)
        assert r.cfg.backbone == "minilm" and r.stage == name.rsplit("-", 1)[1]
    assert make_retriever("gr-sid-minilm-drop-dpo").cfg.prune == "drop"


def test_codebook_init_starts_id_tokens_at_their_centroids(tiny_backbone, tok, tmp_path):
    """id_init="codebook": a level-l ID token's row is its residual k-means centroid (one
    scale for all), dedup tokens get the mean row, and the output bias centres the first
    ID token's logit over the title prompts it was computed on; "auto" under LoRA picks it
    where it fits; a backbone whose hidden size differs from the ID encoder's is refused."""
    import numpy as np

    from conftest import write_tsv_dataset
    from genret.backbone import save_backbone
    from genret.cli import main
    from genret.data import synthetic_dataset
    from genret.semantic import TITLE_PROMPT, SemanticIDRetriever

    ds = synthetic_dataset(n_products=60, n_queries=40)
    data = write_tsv_dataset(ds, tmp_path / "data")
    assert main(["sid", "build", "--data", str(data), "--out", str(tmp_path / "sid"), "--levels", "2",
                 "--codebook", "8", "--quiet"]) == 0
    wide = tiny(tok, hidden_size=384, num_attention_heads=6)
    bb = save_backbone(wide, tok, tmp_path / "wide")
    r = SemanticIDRetriever(stage="sft", sid=str(tmp_path / "sid"), backbone=str(bb), id_init="codebook", train=LORA)
    r._load_start(ds)
    titles = [ds.catalog[p] for p in r.sids.item_ids]
    r.add_id_tokens(titles)
    r.model.eval()
    emb = r.model.get_input_embeddings().weight.detach()
    books = torch.as_tensor(r.sids.quantizer.codebooks)
    space = r.sids.space
    ratios = []
    for level in (1, 2):
        rows = torch.as_tensor(r.token_map[space.index(level, np.arange(8))])
        assert torch.nn.functional.cosine_similarity(emb[rows], books[level - 1]).min() > 0.9999
        ratios.append(emb[rows].norm(dim=1) / books[level - 1].norm(dim=1))
    ratios = torch.cat(ratios)
    assert torch.allclose(ratios, ratios[0], rtol=1e-4)  # one scale for every level
    dedup = torch.as_tensor(r.token_map[space.index(3, np.arange(space.dedup_size))])
    assert torch.allclose(emb[dedup], emb[dedup[0]].expand_as(emb[dedup]))
    first = torch.as_tensor(r.token_map[space.index(1, np.arange(8))])
    with torch.no_grad():
        logits = torch.stack([r.model(input_ids=torch.tensor([tok(TITLE_PROMPT.format(title=t),
                                                                  add_special_tokens=False)["input_ids"]]))
                              .logits[0, -1, first] for t in titles])
    assert logits.std(0).min() > 1e-3 and logits.mean(0).abs().max() < 1e-4  # centred over the 60 prompts

    auto = SemanticIDRetriever(stage="sft", sid=str(tmp_path / "sid"), backbone=str(bb), train=LORA)
    auto._load_start(ds)
    auto.add_id_tokens(titles)  # id_init="auto" under LoRA: codebook, where it fits
    assert torch.equal(auto.model.get_input_embeddings().weight, r.model.get_input_embeddings().weight)
    assert torch.equal(auto.model.lm_head.bias, r.model.lm_head.bias)

    narrow = SemanticIDRetriever(stage="sft", sid=str(tmp_path / "sid"), backbone=str(tiny_backbone),
                                 id_init="codebook", train=LORA)
    narrow._load_start(ds)
    with pytest.raises(ValueError, match="hidden size"):
        narrow.add_id_tokens(titles)
    narrow.cfg.id_init = "auto"  # where it does not fit, auto falls back to random rows
    assert narrow.add_id_tokens(titles)
