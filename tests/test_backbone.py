"""The causal-LM backbone: the embedded pretrain (tiny preset), exact token-id round trips,
word-aligned title encoding, and clear errors."""

import json

import numpy as np
import pytest

from genret.backbone import (EOS, MARKERS, PRESETS, BackboneError, backbone_info, encode_title,
                             get_preset, load_backbone, load_tokenizer, pretrain, save_backbone,
                             special_ids, tokenizer_identity, train_tokenizer, word_spans,
                             word_starts)

HARD = ["Husky 3/4 in. x 10 ft.  Garden-Hose (2-Pack)", "ÉTÉ brushed nickel 20V  cordless",
        "x", "  leading and trailing  ", "Behr 1 gal. #UL200-10 Ultra Pure White"]


@pytest.fixture(scope="module")
def tiny_dir(synthetic):
    """Pretrained once per session through the cache ($GENRET_CACHE, set by conftest), so
    the lexical/semantic tests reuse it."""
    from genret.backbone import default_backbone

    return default_backbone(synthetic, "tiny", seed=0, progress=False)


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_backbone(tiny_dir)


def test_pretrain_writes_a_standard_hf_dir(tiny_dir):
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json", "generation_config.json", "genret_backbone.json",
                 "manifest.json"):
        assert (tiny_dir / name).is_file(), name
    assert not [d for d in tiny_dir.parent.iterdir() if d.name.startswith(".")], \
        "temp/work dirs left behind"
    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    assert model.config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.config.hidden_size == PRESETS["tiny"].hidden_size
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_dir / "tokenizer.json"))
    assert model.config.vocab_size == len(tok)
    info = backbone_info(tiny_dir)
    for key in ("preset", "vocab_size", "data_hash", "train_seconds", "final_loss", "n_params"):
        assert info[key] is not None, key
    assert info["preset"] == "tiny" and info["n_params"] == model.num_parameters()


def test_default_backbone_is_cached(synthetic, tiny_dir):
    from genret.backbone import default_backbone

    stamp = (tiny_dir / "model.safetensors").stat().st_mtime_ns
    assert default_backbone(synthetic, "tiny", seed=0, progress=False) == tiny_dir
    assert (tiny_dir / "model.safetensors").stat().st_mtime_ns == stamp  # not retrained
    assert tiny_dir.name.startswith("tiny-seed0-")


def test_loss_decreases(tiny_dir):
    log = [loss for _, loss in backbone_info(tiny_dir)["loss_log"]]
    assert len(log) >= 5
    assert np.mean(log[-3:]) < np.mean(log[:3]) - 0.5, log


def test_only_train_queries_are_used(synthetic, tiny_dir):
    """The tokenizer and LM never see dev/test queries: pretraining on a dataset whose
    dev/test queries are changed gives the same data hash."""
    from genret.backbone import data_hash, training_texts

    titles, queries = training_texts(synthetic, PRESETS["tiny"])
    heldout = {synthetic.queries[q] for s in ("dev", "test") for q in synthetic.split(s, False)}
    assert heldout and not heldout & set(queries)
    assert data_hash(titles, queries) == backbone_info(tiny_dir)["data_hash"]


def test_token_ids_round_trip(tiny, tiny_dir, tmp_path):
    from tokenizers import Tokenizer

    model, tok = tiny
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))  # independent reference
    before = {t: encode_title(tok, t) for t in HARD}
    for t, ids in before.items():
        assert ids == raw.encode(" " + t, add_special_tokens=False).ids
        assert tok.decode(ids) == " " + t
    save_backbone(model, tok, tmp_path / "copy", preset="tiny")
    model2, tok2 = load_backbone(tmp_path / "copy")
    for t, ids in before.items():
        assert encode_title(tok2, t) == ids
        assert tok2.decode(ids) == " " + t
    assert tokenizer_identity(tok2) == tokenizer_identity(tok)
    assert special_ids(tok2) == special_ids(tok)


def test_no_special_tokens_added(tiny):
    _, tok = tiny
    sp = special_ids(tok)
    assert tok.eos_token == tok.pad_token == tok.bos_token == EOS
    assert sp.eos == sp.pad == tok.eos_token_id
    assert len({sp.sep, sp.eos, sp.query, sp.title, sp.id}) == 5
    for text in ("cordless drill", " Ryobi 18V"):
        ids = tok(text)["input_ids"]  # default add_special_tokens=True must add nothing
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert sp.eos not in ids and ids[-1] != sp.eos
    batch = tok(["a b", "drill"], padding=True)
    assert all(i != sp.eos for row, m in zip(batch["input_ids"], batch["attention_mask"])
               for i, k in zip(row, m) if k)


def test_added_special_tokens_survive_save_and_reload(tiny, tmp_path):
    """Room for later special tokens (semantic-ID codes): add, resize, save, reload."""
    import copy

    model, tok = tiny
    model, tok = copy.deepcopy(model), copy.deepcopy(tok)
    n = len(tok)
    new = [f"<|c{i}|>" for i in range(10)]
    tok.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    model.resize_token_embeddings(len(tok))
    ids = tok.convert_tokens_to_ids(new)
    assert ids == list(range(n, n + 10))
    text = " Husky<|c3|><|c7|>"
    enc = tok(text, add_special_tokens=False)["input_ids"]
    save_backbone(model, tok, tmp_path / "ext")
    model2, tok2 = load_backbone(tmp_path / "ext")
    assert tok2.convert_tokens_to_ids(new) == ids
    assert tok2(text, add_special_tokens=False)["input_ids"] == enc
    assert model2.get_input_embeddings().num_embeddings == len(tok2)
    assert set(MARKERS) <= set(tok2.all_special_tokens) and set(new) <= set(tok2.all_special_tokens)
    assert word_starts(tok2, ids).sum() == 0  # special tokens never start a word


def test_plain_hf_save_is_still_detected(tiny, tmp_path):
    """A fine-tuned copy saved with plain save_pretrained (no genret_backbone.json) is still
    read with the exact tokenizer, thanks to the marker in tokenizer_config.json."""
    model, tok = tiny
    d = tmp_path / "plain"
    model.save_pretrained(str(d))
    tok.save_pretrained(str(d))
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    assert cfg.get("genret_tokenizer") is True
    _, tok2 = load_backbone(d)
    for t in HARD:
        assert encode_title(tok2, t) == encode_title(tok, t)


def test_encode_title_and_word_starts_by_hand():
    tok = train_tokenizer(["cordless drill", "brushed nickel faucet", "cordless drill kit"] * 5,
                          vocab_size=400, min_frequency=1)
    ids = encode_title(tok, "Cordless drill-kit 3/4 in.")
    pieces = tok.convert_ids_to_tokens(ids)
    assert "".join(pieces).replace("Ġ", " ") == " Cordless drill-kit 3/4 in."
    starts = word_starts(tok, ids)
    assert starts.dtype == bool and starts.shape == (len(ids),)
    assert starts.tolist() == [p.startswith("Ġ") for p in pieces]
    assert starts[0]  # the leading space makes the first word a word too
    words = [tok.decode(ids[a:b]) for a, b in word_spans(tok, ids)]
    assert words == [" Cordless", " drill-kit", " 3/4", " in."]
    # a slice between word starts decodes to whole words of the title
    a, b = word_spans(tok, ids)[1][0], word_spans(tok, ids)[2][1]
    assert tok.decode(ids[a:b]) == " drill-kit 3/4"
    sp = special_ids(tok)
    assert not word_starts(tok, [sp.sep, sp.eos, sp.query]).any()
    with pytest.raises(BackboneError, match="outside the tokenizer's vocabulary"):
        word_starts(tok, [len(tok) + 5])


def test_clear_errors(tmp_path, synthetic, tiny_dir):
    with pytest.raises(BackboneError, match="no such directory.*genret pretrain"):
        load_backbone(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(tmp_path / "empty")
    with pytest.raises(BackboneError, match="unknown preset 'huge'.*tiny, small"):
        get_preset("huge")
    with pytest.raises(BackboneError, match="unknown preset"):
        pretrain(synthetic, tmp_path / "x", preset="huge")
    with pytest.raises(BackboneError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_truncated_weights_are_reported(tiny_dir, tmp_path):
    import shutil

    d = tmp_path / "broken"
    shutil.copytree(tiny_dir, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    with pytest.raises(BackboneError, match="truncated or modified"):
        load_backbone(d)


def test_cli_pretrain(synthetic_dir, tmp_path, capsys):
    from genret.cli import main

    assert main(["pretrain", "--data", str(synthetic_dir), "--out", str(tmp_path / "bb"),
                 "--preset", "tiny", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "'loss'" not in out  # --quiet: the summary line only
    assert backbone_info(tmp_path / "bb")["preset"] == "tiny"
    assert main(["pretrain", "--data", str(synthetic_dir), "--out", str(tmp_path / "bb2"),
                 "--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_pretraining_on_a_cache_miss_leaves_the_global_generators_alone(synthetic, tmp_path):
    """A channel seeds, then asks for its backbone: a first-use pretrain in between must not
    change what it draws next (this made PROSPER differ between a fresh and a cached run)."""
    import random

    import torch

    from genret.backbone import default_backbone

    def draw():
        return torch.rand(3).tolist(), np.random.rand(3).tolist(), random.random()

    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expected = draw()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    default_backbone(synthetic, "tiny", seed=0, cache_dir=tmp_path, progress=False)
    assert (tmp_path / "backbones").is_dir() and draw() == expected
