"""Tokenizer conventions the lexical/semantic trainers rely on.

- a title is encoded as ``" " + title`` without special tokens (:func:`encode_title`),
  so every word, the first included, starts with a ByteLevel ``Ġ`` piece and spans
  sliced from the ids are word-aligned (:func:`word_starts`, :func:`word_spans`);
- the tokenizer adds nothing on its own (no BOS, no EOS post-processor: trl appends the
  EOS itself); bos = eos = pad = ``<|endoftext|>``;
- markers ``<|sep|>`` (span separator), ``<|query|>``, ``<|title|>``, ``<|id|>`` are
  special tokens (:func:`special_ids`); more can be added later with
  ``tokenizer.add_special_tokens`` + ``model.resize_token_embeddings`` and survive
  ``save_backbone`` / ``load_backbone``.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple

import numpy as np

from ..artifact import ArtifactError


EOS = "<|endoftext|>"
SEP = "<|sep|>"
QUERY = "<|query|>"
TITLE = "<|title|>"
ID = "<|id|>"
MARKERS = [SEP, QUERY, TITLE, ID]
SPECIAL_TOKENS = [EOS, *MARKERS]  # ids 0..4 in the embedded tokenizer


class BackboneError(ArtifactError):
    """A backbone that cannot be built or loaded; the message says why and what to do."""


class SpecialIds(NamedTuple):
    sep: int
    eos: int
    pad: int
    query: int
    title: int
    id: int


def special_ids(tokenizer) -> SpecialIds:
    """Ids of the separator, EOS, padding and prompt markers.

    Raises :class:`BackboneError` for a tokenizer that lacks a marker (load it with
    :func:`load_backbone`, which adds missing markers to foreign tokenizers)."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in MARKERS if t not in vocab]
    if missing:
        raise BackboneError(f"the tokenizer has no {', '.join(missing)} token(s); load the model with "
                            "genret.backbone.load_backbone (it adds the genret markers) or call "
                            "add_markers(model, tokenizer)")
    if tokenizer.eos_token_id is None:
        raise BackboneError("the tokenizer has no EOS token; set tokenizer.eos_token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return SpecialIds(sep=vocab[SEP], eos=tokenizer.eos_token_id, pad=pad, query=vocab[QUERY],
                      title=vocab[TITLE], id=vocab[ID])


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``" " + text`` with no special tokens added (queries, titles, spans
    of free text): every word starts with a space piece, as in :func:`encode_title`."""
    return list(tokenizer(" " + text, add_special_tokens=False)["input_ids"])


def encode_title(tokenizer, title: str) -> list[int]:
    """Token ids of ``" " + title`` without special tokens. Slices of these ids that start
    at a :func:`word_starts` position and end before one (or at the end) are word-aligned
    spans; build training targets by slicing them, never by re-tokenising span strings."""
    return encode_text(tokenizer, title)


def _word_start_table(tokenizer) -> np.ndarray:
    n = len(tokenizer)
    table = getattr(tokenizer, "_genret_word_start", None)
    if table is None or len(table) != n:
        pieces = tokenizer.convert_ids_to_tokens(list(range(n)))
        special = set(tokenizer.all_special_ids)
        if _is_wordpiece(tokenizer):  # a piece starts a word unless it is a ## continuation
            starts = lambda p: not p.startswith("##")  # noqa: E731
        else:  # ByteLevel Ġ, SentencePiece ▁
            starts = lambda p: p[:1] in ("Ġ", "▁", " ")  # noqa: E731
        table = np.array([i not in special and p is not None and starts(p)
                          for i, p in enumerate(pieces)], dtype=bool)
        tokenizer._genret_word_start = table
    return table


def _is_wordpiece(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and json.loads(backend.to_str())["model"].get("type") == "WordPiece"


def word_starts(tokenizer, ids) -> np.ndarray:
    """Boolean array: does token ``ids[i]`` begin a word (its piece starts with a space:
    ByteLevel ``Ġ`` or SentencePiece ``▁``; for WordPiece (MiniLM/BERT): it is no ``##``
    continuation)? Special tokens never do."""
    table = _word_start_table(tokenizer)
    arr = np.asarray(ids, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= len(table)):
        raise BackboneError(f"token id {int(arr.max() if arr.max() >= len(table) else arr.min())} "
                            f"is outside the tokenizer's vocabulary (size {len(table)})")
    return table[arr]


def word_spans(tokenizer, ids) -> list[tuple[int, int]]:
    """(start, end) token offsets of the words of ``ids`` (end exclusive): a word runs
    from one word start to the next. Tokens before the first word start are skipped."""
    starts = np.flatnonzero(word_starts(tokenizer, ids)).tolist()
    return list(zip(starts, starts[1:] + [len(ids)]))


def tokenizer_identity(tokenizer) -> str:
    """A short hash of the tokenizer's full definition (vocab, merges, added tokens):
    record it in any artifact built from token ids (FM-index, tries, caches)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # padding/truncation settings change at run time: leave them out
        spec = json.loads(backend.to_str())
        text = json.dumps({k: spec.get(k) for k in ("model", "added_tokens", "normalizer",
                                                      "pre_tokenizer", "post_processor")}, sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def add_markers(model, tokenizer) -> list[str]:
    """Give a foreign tokenizer the genret markers and a pad token (= EOS), resizing the
    model's embeddings if needed. Returns the tokens added (none for our backbones)."""
    vocab = tokenizer.get_vocab()
    added = [t for t in MARKERS if t not in vocab]
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added},
                                     replace_extra_special_tokens=False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None and len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    return added


def _set_specials(tok):
    """The embedded tokenizer's specials (bos = eos = pad = ``<|endoftext|>``) where the
    directory names none; a MiniLM backbone keeps its own (eos ``[SEP]``, pad ``[PAD]``)."""
    if tok.eos_token is None:
        tok.eos_token = EOS
    if tok.eos_token == EOS and tok.bos_token is None:
        tok.bos_token = EOS
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok
