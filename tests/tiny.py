"""Tiny random backbones built from a dataset's texts, for tests that train (seconds on a CPU)."""

from dataclasses import replace
from pathlib import Path

import torch


def texts(ds) -> list[str]:
    return ds.titles + list(ds.queries.values())


def tiny_qwen(d: Path, ds) -> str:
    """A random 2-layer Qwen2 with a 400-piece byte-level BPE: a genret backbone directory."""
    from transformers import Qwen2ForCausalLM

    from genret.backbone import PRESETS, model_config, save_backbone, train_tokenizer

    tok = train_tokenizer(texts(ds), 400, 1)
    preset = replace(PRESETS["tiny"], hidden_size=32, intermediate_size=64, num_heads=2, num_kv_heads=1)
    torch.manual_seed(0)
    save_backbone(Qwen2ForCausalLM(model_config(preset, len(tok), tok.eos_token_id)), tok, d, preset="test")
    return str(d)


def tiny_bert(d: Path, ds, dropout: float = 0.1) -> str:
    """A random 2-layer BERT (AutoModel directory) with a 400-piece WordPiece vocabulary."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

    d.mkdir(parents=True)
    t = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    t.normalizer = normalizers.BertNormalizer(lowercase=True)
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.train_from_iterator(texts(ds), trainer=trainers.WordPieceTrainer(
        vocab_size=400, show_progress=False, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    vocab = sorted(t.get_vocab().items(), key=lambda x: x[1])
    (d / "vocab.txt").write_text("".join(w + "\n" for w, _ in vocab))
    tok = BertTokenizerFast(vocab=str(d / "vocab.txt"))
    tok.save_pretrained(d)
    probe = "Acme cordless drill M123A 3/4 in."
    assert AutoTokenizer.from_pretrained(d)(probe)["input_ids"] == tok(probe)["input_ids"]
    assert len(tok) == 400
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)).save_pretrained(d)
    return str(d)


def tiny_sentence_encoder(d: Path, ds) -> str:
    """A sentence-transformers directory: a dropout-free tiny BERT, mean pooling, normalised."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    bert = Transformer(tiny_bert(d.with_name(d.name + "-bert"), ds, dropout=0.0), max_seq_length=32)
    SentenceTransformer(modules=[bert, Pooling(bert.get_embedding_dimension(), "mean"), Normalize()],
                        device="cpu").save(str(d))
    return str(d)


MINILM_SIZES = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)


def tiny_minilm(tok, prefix_lm: bool = True, **sizes):
    """A random-init MiniLM-form prefix-LM (genret.minilm) for MiniLM's tokenizer ``tok``:
    2 layers, width 32 unless ``sizes`` say otherwise; seeded, in eval mode."""
    from genret.minilm import PROMPT_ENDS, from_minilm

    torch.manual_seed(0)
    return from_minilm(tok.convert_tokens_to_ids(PROMPT_ENDS), len(tok), prefix_lm=prefix_lm,
                       pretrained=False, **{**MINILM_SIZES, **sizes}).eval()
