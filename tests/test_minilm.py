"""The MiniLM prefix-LM backbone: the mask it promises, with a 2-layer random-init
network and MiniLM's own tokenizer (the full MiniLM only in the weight-loading test)."""

import pytest
import torch

from genret.minilm import PROMPT_ENDS, PrefixBertLM, from_minilm, minilm_tokenizer, prefix_lengths

TINY = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)


@pytest.fixture(scope="module")
def tok():
    return minilm_tokenizer()


def tiny(tok, prefix_lm=True):
    torch.manual_seed(0)
    return from_minilm(tok.convert_tokens_to_ids(PROMPT_ENDS), len(tok), prefix_lm=prefix_lm,
                       pretrained=False, **TINY).eval()


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
    causal = tiny(tok, prefix_lm=False)
    with torch.no_grad():
        assert torch.allclose(causal(torch.tensor([p + c])).logits[0, 1], causal(torch.tensor([p2 + c])).logits[0, 1])


def test_cached_decoding_equals_one_full_forward(tok):
    m = tiny(tok)
    p, c = ids(tok, "<|query|> brushed nickel faucet<|title|>"), ids(tok, " moen faucet in brushed nickel")
    with torch.no_grad():
        full = m(torch.tensor([p + c])).logits[0, len(p) - 1:-1]
        out = m(torch.tensor([p]), use_cache=True)
        steps = [out.logits[0, -1]]
        for t in c[:-1]:
            out = m(torch.tensor([[t]]), cache=out.cache, use_cache=True)
            steps.append(out.logits[0, -1])
    assert torch.allclose(full, torch.stack(steps), atol=1e-5)


def test_left_padding_does_not_change_generation(tok):
    m = tiny(tok)
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
