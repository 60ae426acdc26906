"""FM-index span constraint against brute force, and the logits processor's masking."""

import numpy as np
import pytest
import torch

from fm_index import FMIndex
from transformers import LogitsProcessorList

from genret.decoding import ConstraintLogitsProcessor, FMIndexSpanConstraint

SEP, EOS = 1, 0


def _brute_allowed(docs, word_start, gen, max_span_tokens, max_spans):
    done, cur = FMIndexSpanConstraint.split(gen, SEP)
    cur = list(cur)
    if not cur:
        return {t for d in docs for t in d if word_start[t]}
    follow, boundary = set(), False
    for d in docs:
        for i in range(len(d) - len(cur) + 1):
            if d[i:i + len(cur)] == cur:
                j = i + len(cur)
                if j == len(d) or word_start[d[j]]:
                    boundary = True
                if j < len(d):
                    follow.add(d[j])
    if len(cur) >= max_span_tokens:
        follow = {t for t in follow if not word_start[t]}
    if boundary and tuple(cur) not in done:
        follow |= {EOS} | ({SEP} if len(done) + 1 < max_spans else set())
    return follow


def _corpus(seed, vocab=12):
    """A random generator, 15 random titles, random word starts (not SEP/EOS) and their index."""
    rng = np.random.default_rng(seed)
    word_start = rng.random(vocab) < 0.5
    word_start[:2] = False
    docs = [rng.integers(2, vocab, size=rng.integers(1, 9)).tolist() for _ in range(15)]
    return rng, docs, word_start, FMIndex.build(docs, vocab_size=vocab)


@pytest.mark.parametrize("seed", range(5))
def test_allowed_matches_brute_force(seed):
    rng, docs, word_start, idx = _corpus(seed)
    c = FMIndexSpanConstraint(idx, SEP, EOS, word_start, max_span_tokens=3, max_spans=2)
    # random walks through the constraint: every allowed step must match brute force
    for _ in range(40):
        gen = []
        for _ in range(10):
            got = set(c.allowed([gen])[0].tolist())
            assert got == _brute_allowed(docs, word_start, gen, 3, 2), gen
            if not got or EOS in got and rng.random() < 0.3:
                break
            gen.append(int(rng.choice(sorted(got))))
            if gen[-1] == EOS:
                break
        for span in c.spans(gen):
            assert idx.count(np.array(span)) > 0


def test_processor_masks_and_renormalises():
    idx = FMIndex.build([[2, 3, 4], [2, 5]], vocab_size=6)
    c = FMIndexSpanConstraint(idx, SEP, EOS, None, max_span_tokens=4, max_spans=2)
    proc = ConstraintLogitsProcessor(c, prompt_len=2, fallback_id=EOS)
    ids = torch.tensor([[9, 9, 2], [9, 9, 4]])  # prompt of 2 tokens, then one generated token
    logp = torch.log_softmax(torch.randn(2, 6), dim=-1)
    out = proc(ids, logp)
    allowed0 = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
    assert allowed0 == {3, 5, EOS, SEP}  # after [2]: 3 or 5 follow; every token starts a word
    assert torch.logsumexp(out[0], 0).item() == pytest.approx(0.0, abs=1e-5)
    # [4] ends a title: only ending is allowed
    assert set(torch.isfinite(out[1]).nonzero().flatten().tolist()) == {EOS, SEP}


def test_processor_keeps_beam_states_across_reordered_steps():
    """Beam search reorders and duplicates rows between steps: the processor finds each row's
    parent by its generated tokens, advances the kept states (no replay after the first step),
    and its masks equal the brute-force-checked ``allowed`` of every row's tokens."""
    rng, docs, word_start, idx = _corpus(7)
    vocab = idx.vocab_size
    c = FMIndexSpanConstraint(idx, SEP, EOS, word_start, max_span_tokens=3, max_spans=2)
    tracked = FMIndexSpanConstraint(idx, SEP, EOS, word_start, max_span_tokens=3, max_spans=2)
    replays = []
    tracked.replay = lambda gen: replays.append(len(gen)) or c.replay(gen)
    proc = ConstraintLogitsProcessor(tracked, fallback_id=EOS)
    rows = [[9, 9, 9]] * 6  # the prompt; generated tokens start at column 3 in every row
    for _ in range(8):
        ids = torch.tensor(rows)
        out = proc(ids, torch.log_softmax(torch.randn(len(rows), vocab), dim=-1))
        for row, got in zip(rows, out):
            want = c.allowed([row[3:]])[0].tolist() or [EOS]
            assert torch.isfinite(got).nonzero().flatten().tolist() == want, row
        parents = rng.integers(0, len(rows), len(rows))  # reorder and duplicate beams
        rows = [rows[p] + [int(rng.choice(torch.isfinite(out[p]).nonzero().flatten().numpy()))] for p in parents]
    assert replays == [6]  # only the first step replays (from the empty output)
    assert proc.steps == 8 and proc.seconds > 0
    batched = c.allowed([r[3:] for r in rows])  # many beams in one call = one by one
    assert all(a.tolist() == c.allowed([r[3:]])[0].tolist() for a, r in zip(batched, rows))


@pytest.fixture(scope="module")
def tiny_lm():
    """A random-weight tiny Qwen2 and a BPE tokenizer trained on the synthetic titles, and an
    FM-index span constraint over those titles."""
    from transformers import Qwen2ForCausalLM

    from genret.backbone import encode_title, get_preset, model_config, special_ids, train_tokenizer, word_starts
    from genret.data import synthetic_dataset

    ds = synthetic_dataset()
    tok = train_tokenizer(ds.titles + list(ds.queries.values()), 600)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(model_config(get_preset("tiny"), len(tok), tok.eos_token_id)).eval()
    sp = special_ids(tok)
    index = FMIndex.build([encode_title(tok, t) for t in ds.titles], vocab_size=len(tok))
    con = FMIndexSpanConstraint(index, sp.sep, sp.eos, word_starts(tok, np.arange(len(tok))), 4, 2)
    return model, tok, con, [ds.queries[q] for q in sorted(ds.queries)[:4]]


def _beams(model, tok, con, texts, side):
    tok.padding_side = side
    enc = tok([f"<|query|> {t}<|title|>" for t in texts], return_tensors="pt", padding=True,
              add_special_tokens=False)
    proc = ConstraintLogitsProcessor(con, fallback_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    with torch.no_grad():  # a stock generate: the processor takes the prompt length from the input
        out = model.generate(**enc, num_beams=4, num_return_sequences=4, max_new_tokens=8, do_sample=False,
                             logits_processor=LogitsProcessorList([proc]), pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, output_scores=True, return_dict_in_generate=True)
    plen = enc["input_ids"].shape[1]
    strip = (tok.eos_token_id, tok.pad_token_id)
    seqs = [[t for t in s if t not in strip] for s in out.sequences[:, plen:].tolist()]
    return seqs, out.sequences_scores.tolist()


def test_left_padded_batch_gives_the_beams_of_one_by_one_decoding(tiny_lm):
    model, tok, con, texts = tiny_lm
    lengths = [len(tok(f"<|query|> {t}<|title|>", add_special_tokens=False)["input_ids"]) for t in texts]
    assert len(set(lengths)) > 1  # the batch really is padded
    seqs, scores = _beams(model, tok, con, texts, "left")
    for i, text in enumerate(texts):
        one, one_scores = _beams(model, tok, con, [text], "left")
        assert seqs[4 * i:4 * i + 4] == one
        assert scores[4 * i:4 * i + 4] == pytest.approx(one_scores, abs=1e-4)
        for s in one:  # every beam spells catalog spans
            assert s and all(con.index.count(np.array(span)) > 0 for span in con.spans(s))
    with pytest.raises(ValueError, match="right-padded"):
        _beams(model, tok, con, texts, "right")


def test_restricted_head_leaves_the_beams_and_scores_unchanged(tiny_lm):
    """The output layer over the constraint's vocabulary only: the same beams and scores
    (renormalisation makes the other rows irrelevant), without calling the full layer."""
    from semantic_id import PrefixTrie

    from genret.decoding import TrieConstraint, constrained_beam_search, restricted_head

    model, tok, con, texts = tiny_lm
    head = model.get_output_embeddings()
    trie = PrefixTrie.build([np.array(s) for s in ([1, 2, 0], [1, 3, 0], [2, 5, 0], [4, 0])])
    ids = TrieConstraint(trie, 40, tok.eos_token_id)
    assert ids.vocabulary().tolist() == sorted([tok.eos_token_id, 41, 42, 43, 44, 45])
    assert set(con.vocabulary()) == set(con.index.alphabet) | {con.sep_id, con.eos_id}
    calls = []
    hook = head.register_forward_hook(lambda *a: calls.append(1))
    try:
        for c in (con, ids):
            run = lambda restrict: constrained_beam_search(  # noqa: E731
                model, tok, texts, c, num_beams=4, max_new_tokens=6, prompt="<|query|> {query}<|title|>",
                batch_size=2, restrict_head=restrict)
            calls.clear()
            fast = run(True)
            assert not calls and model.get_output_embeddings() is head  # restricted, then restored
            full = run(False)
            assert calls
            assert [[h.tokens for h in q] for q in fast] == [[h.tokens for h in q] for q in full]
            assert [h.score for q in fast for h in q] == pytest.approx([h.score for q in full for h in q], abs=1e-4)
    finally:
        hook.remove()
    with pytest.raises(RuntimeError, match="inside"), restricted_head(model, [1, 2]):
        assert model.get_output_embeddings() is not head
        raise RuntimeError("inside")
    assert model.get_output_embeddings() is head  # restored on an exception too
    x = torch.randn(3, head.in_features)
    with restricted_head(model, [3, 7]):
        out = model.get_output_embeddings()(x)
    assert out.shape == (3, head.out_features)
    assert torch.allclose(out[:, [3, 7]], head(x)[:, [3, 7]], atol=1e-6)
    assert (out.softmax(-1)[:, [3, 7]].sum(-1) - 1).abs().max() < 1e-6  # the other rows get probability 0
