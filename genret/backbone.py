"""The causal-LM backbone: load any HF causal LM, or pretrain the embedded default.

No model hub is reachable here, so the default backbone is built locally by
:func:`pretrain`: a byte-level BPE tokenizer (HF ``tokenizers``) and a small
Qwen2-architecture causal LM trained from scratch with the HF Trainer on the catalog
titles and the **train-split** queries (never dev/test). It is saved as an ordinary HF
directory (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...) plus a
``genret_backbone.json`` marker/manifest, so everything downstream loads it the way it
would load a real checkpoint: :func:`load_backbone`.

Tokenizer pitfall (measured): ``AutoTokenizer`` maps a directory whose ``config.json``
says ``qwen2`` to ``Qwen2Tokenizer``, which rebuilds the pre-tokenizer (single digits,
another regex) and silently changes the ids. :func:`load_backbone` therefore loads our
own directories with ``PreTrainedTokenizerFast`` (exactly what ``tokenizer.json`` says);
never use ``AutoTokenizer`` on them.

Conventions the lexical/semantic trainers rely on:

- a title is encoded as ``" " + title`` without special tokens (:func:`encode_title`),
  so every word, the first included, starts with a ByteLevel ``Ġ`` piece and spans
  sliced from the ids are word-aligned (:func:`word_starts`, :func:`word_spans`);
- the tokenizer adds nothing on its own (no BOS, no EOS post-processor: trl appends the
  EOS itself); bos = eos = pad = ``<|endoftext|>``;
- markers ``<|sep|>`` (span separator), ``<|query|>``, ``<|title|>``, ``<|id|>`` are
  special tokens (:func:`special_ids`); more can be added later with
  ``tokenizer.add_special_tokens`` + ``model.resize_token_embeddings`` and survive
  :func:`save_backbone` / :func:`load_backbone`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

# Several processes share two cores here: with libgomp's default busy-waiting, torch ran
# 10-20x slower under that contention (measured: 40 vs 850 tokens/s for the small model).
# Only effective if set before torch is first imported; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from .artifact import ArtifactError, artifact_kind, atomic_dir, check_output_dir, loading, read_manifest

MARKER_FILE = "genret_backbone.json"
KIND = "backbone"
FORMAT_VERSION = 1

EOS = "<|endoftext|>"
SEP = "<|sep|>"
QUERY = "<|query|>"
TITLE = "<|title|>"
ID = "<|id|>"
MARKERS = [SEP, QUERY, TITLE, ID]
SPECIAL_TOKENS = [EOS, *MARKERS]  # ids 0..4 in the embedded tokenizer


class BackboneError(ArtifactError):
    """A backbone that cannot be built or loaded; the message says why and what to do."""


@dataclass(frozen=True)
class Preset:
    """Size and training schedule of the embedded backbone."""

    name: str
    vocab_size: int  # BPE target size, special tokens and the 256 bytes included
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_len: int = 48  # tokens per training sequence (marker + text + EOS), truncated
    max_texts: int | None = None  # a seeded subset of the texts (None = all)
    epochs: float = 1.0
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    weight_decay: float = 0.01
    min_frequency: int = 2  # BPE merges need at least this many occurrences
    max_position_embeddings: int = 512


PRESETS: dict[str, Preset] = {
    # for tests and demos: seconds on 2 cores
    "tiny": Preset("tiny", vocab_size=2000, hidden_size=64, num_layers=2, num_heads=2,
                   num_kv_heads=1, intermediate_size=128, max_texts=3000, batch_size=16,
                   learning_rate=3e-3),
    # the default for results, the prototype's size: 6.22M parameters (12k vocabulary).
    # One epoch over the Home Depot titles + train queries (1.06M tokens): 744 CPU-seconds,
    # i.e. ~6-7 min on 2 idle cores (26 min wall on 2 cores shared at load ~8).
    "small": Preset("small", vocab_size=12000, hidden_size=256, num_layers=4, num_heads=4,
                    num_kv_heads=2, intermediate_size=768, learning_rate=1e-3),
}


# ----------------------------------------------------------------------------- helpers

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


# ----------------------------------------------------------------------------- loading

def is_genret_backbone(path: str | os.PathLike) -> bool:
    p = Path(path)
    if (p / MARKER_FILE).is_file():
        return True
    cfg = p / "tokenizer_config.json"
    if cfg.is_file():
        try:
            return bool(json.loads(cfg.read_text()).get("genret_tokenizer"))
        except (ValueError, OSError):  # a damaged file (JSON or UTF-8): not ours to trust
            return False
    return False


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a genret backbone directory, exactly as ``tokenizer.json`` defines
    it (``PreTrainedTokenizerFast``; see the module docstring for why not AutoTokenizer)."""
    from transformers import PreTrainedTokenizerFast

    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise BackboneError(f"{p}: no tokenizer.json; the backbone directory is incomplete, "
                            "rebuild it with `genret pretrain`")
    tok = PreTrainedTokenizerFast.from_pretrained(str(p))
    return _set_specials(tok)


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


def load_backbone(name_or_path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                  markers: bool = True, verify: bool = True):
    """Load ``(model, tokenizer)``: a genret backbone directory (from :func:`pretrain` or
    :func:`save_backbone`), or any HF causal LM by local path or hub name.

    A genret directory is checked against its manifest first: file sizes, and sha256 unless
    ``verify=False`` (for a directory whose files were checked already); a damaged one is
    a one-line BackboneError naming the file. Foreign tokenizers get the genret markers
    (and pad = EOS) with ``markers=True``, the model's embeddings resized to match. The
    model is in eval mode.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import minilm  # registers the MiniLM prefix-LM with the Auto classes

    if not str(name_or_path):
        raise BackboneError("no backbone given: pass a directory from `genret pretrain` or an HF model name")
    if str(name_or_path) in minilm.FORMS:
        return minilm.load_minilm(str(name_or_path))
    p = Path(name_or_path)
    looks_local = p.is_absolute() or str(name_or_path).startswith((".", "~")) or p.exists() \
        or len(p.parts) > 2
    if looks_local and not p.exists():
        raise BackboneError(f"{p}: no such directory; build the embedded backbone with "
                            f"`genret pretrain --out {p}` or pass an HF model path")
    if p.exists() and not p.is_dir():
        raise BackboneError(f"{p}: is a file; pass the backbone directory (holding config.json)")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise BackboneError(f"{p}: no config.json, so not a model directory; build one with "
                                f"`genret pretrain --out {p}`")
        if artifact_kind(p) == KIND or is_genret_backbone(p):  # a damaged marker is checked too
            try:
                if (p / "manifest.json").is_file():
                    read_manifest(p, kind=KIND, verify=verify)
                with loading(p, artifact_kind(p)):  # a model inside another artifact has no kind
                    tokenizer = load_tokenizer(p)
                    model = AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype)
            except ArtifactError as e:
                raise BackboneError(str(e)) from None
            rows = model.get_input_embeddings().num_embeddings
            if len(tokenizer) > rows:
                raise BackboneError(f"{p}: the tokenizer has {len(tokenizer)} tokens but the model only "
                                    f"{rows} embeddings; save model and tokenizer together with "
                                    "save_backbone after resize_token_embeddings")
            model.eval()
            return model, tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
        model = AutoModelForCausalLM.from_pretrained(str(name_or_path), dtype=dtype)
    except OSError as e:
        raise BackboneError(f"cannot load {name_or_path!r}: {e}. No model hub is reachable here: pass a "
                            "local directory, e.g. one built by `genret pretrain`") from None
    if markers:
        add_markers(model, tokenizer)
    model.eval()
    return model, tokenizer


def save_backbone(model, tokenizer, out_dir: str | os.PathLike, overwrite: bool = False, **info) -> Path:
    """Save model + tokenizer atomically as a genret backbone directory (HF layout plus
    ``genret_backbone.json`` with ``info`` and ``manifest.json`` with checksums). Use it
    for fine-tuned models too, so :func:`load_backbone` keeps reading the tokenizer right.
    ``out_dir`` must be absent, empty or a backbone (another genret artifact only with
    ``overwrite``), never a user's folder."""
    if hasattr(model, "merge_and_unload"):
        raise BackboneError("save_backbone got a PEFT model (only the adapter would be saved); "
                            "call model.merge_and_unload() first")
    out = Path(out_dir)
    ident = tokenizer_identity(tokenizer)
    with atomic_dir(out, KIND, FORMAT_VERSION, overwrite, tokenizer=ident,
                    preset=info.get("preset")) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        _mark_tokenizer_config(tmp)
        specials = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
                    "pad_token": tokenizer.pad_token,
                    "additional_special_tokens": _extra_specials(tokenizer)}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
        marker = {"genret_backbone": FORMAT_VERSION, "tokenizer": ident,
                  "vocab_size": len(tokenizer), **info}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, default=str))
    return out


def _extra_specials(tokenizer) -> list[str]:
    extra = getattr(tokenizer, "extra_special_tokens", None)  # transformers 5
    if not isinstance(extra, (list, tuple)):
        extra = getattr(tokenizer, "additional_special_tokens", None) or []
    return [str(t) for t in extra]


def _mark_tokenizer_config(d: Path) -> None:
    """Tag tokenizer_config.json so a copy without genret_backbone.json is still detected."""
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    cfg["genret_tokenizer"] = True
    cfg["clean_up_tokenization_spaces"] = False
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))


def backbone_info(path: str | os.PathLike) -> dict:
    """The ``genret_backbone.json`` of a backbone directory."""
    f = Path(path) / MARKER_FILE
    if not f.is_file():
        raise BackboneError(f"{path}: no {MARKER_FILE}; not a genret backbone directory")
    return json.loads(f.read_text())


# ----------------------------------------------------------------------------- pretraining

def training_texts(dataset, preset: Preset, seed: int = 0) -> tuple[list[str], list[str]]:
    """(titles, queries) the backbone learns from: distinct catalog titles and distinct
    **train-split** queries (labelled or not; never dev/test), sorted so that the row
    order of the data file changes nothing; ``preset.max_texts`` keeps a seeded subset."""
    titles = sorted({t for t in dataset.catalog.values() if t and t.strip()})
    train_q = dataset.split("train", evaluated_only=False)
    queries = sorted({dataset.queries[q] for q in train_q if dataset.queries[q].strip()})
    if preset.max_texts is not None and len(titles) + len(queries) > preset.max_texts:
        def pick(xs, n):
            key = lambda s: hashlib.sha1(f"{seed}:{s}".encode("utf-8")).digest()  # noqa: E731
            return sorted(sorted(xs, key=key)[:n])
        nq = min(len(queries), preset.max_texts // 4)
        titles, queries = pick(titles, preset.max_texts - nq), pick(queries, nq)
    return titles, queries


def data_hash(titles: list[str], queries: list[str]) -> str:
    h = hashlib.sha256()
    for kind, texts in (("T", titles), ("Q", queries)):
        for t in texts:
            h.update(kind.encode() + t.encode("utf-8") + b"\n")
    return "sha256:" + h.hexdigest()[:16]


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2, progress: bool = False):
    """A byte-level BPE tokenizer over ``" " + text``; special tokens first (ids 0..4).

    ByteLevel pre-tokenizer with ``add_prefix_space=False``: the caller adds the leading
    space (:func:`encode_text`), so training and use see the same strings. No
    normalizer (lossless) and no post-processor that adds tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=SPECIAL_TOKENS, show_progress=progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((" " + t for t in texts), trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, pad_token=EOS,
                                   additional_special_tokens=MARKERS,
                                   clean_up_tokenization_spaces=False, model_max_length=1024)
    return _set_specials(fast)


class _Collator:
    """Right-pads a batch with pad ids; labels are -100 on padding (pad id = EOS id, so
    the mask, not the id, decides what is padding)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows):
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            mask[i, : len(r["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def sequences(tokenizer, titles: list[str], queries: list[str], max_len: int) -> list[list[int]]:
    """Training sequences ``<|title|> title <eos>`` and ``<|query|> query <eos>``,
    truncated to ``max_len``."""
    sp = special_ids(tokenizer)
    out = [([sp.title] + encode_title(tokenizer, t) + [sp.eos])[:max_len] for t in titles]
    out += [([sp.query] + encode_text(tokenizer, q) + [sp.eos])[:max_len] for q in queries]
    return out


def model_config(preset: Preset, vocab_size: int, eos_id: int):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=vocab_size, hidden_size=preset.hidden_size,
                       intermediate_size=preset.intermediate_size,
                       num_hidden_layers=preset.num_layers, num_attention_heads=preset.num_heads,
                       num_key_value_heads=preset.num_kv_heads,
                       max_position_embeddings=preset.max_position_embeddings,
                       tie_word_embeddings=True, use_sliding_window=False,
                       bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)


def get_preset(preset: str | Preset) -> Preset:
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise BackboneError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return PRESETS[preset]


def pretrain(dataset, out_dir: str | os.PathLike, preset: str | Preset = "small", seed: int = 0,
             progress: bool = True, overwrite: bool = False) -> Path:
    """Train the embedded backbone (tokenizer, then a Qwen2 LM from scratch, one epoch)
    on ``dataset``'s titles and train queries and save it atomically to ``out_dir``
    (checked before training: see :func:`save_backbone` for what it may replace).

    Returns ``out_dir``; its ``genret_backbone.json`` records the preset, vocabulary size,
    parameter count, data hash, training seconds and the loss log.
    """
    from datasets import Dataset as HFDataset
    from transformers import (GenerationConfig, PrinterCallback, Qwen2ForCausalLM, Trainer,
                              TrainingArguments, set_seed)

    cfg = get_preset(preset)
    out = check_output_dir(out_dir, KIND, overwrite)
    titles, queries = training_texts(dataset, cfg, seed)
    if not titles:
        raise BackboneError(f"{dataset.name}: the catalog has no titles to pretrain on")
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(titles + queries, cfg.vocab_size, cfg.min_frequency, progress=False)
    tok_s = time.perf_counter() - t0
    seqs = sequences(tokenizer, titles, queries, cfg.max_len)
    n_tokens = sum(len(s) for s in seqs)

    set_seed(seed)
    model = Qwen2ForCausalLM(model_config(cfg, len(tokenizer), tokenizer.eos_token_id))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.eos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.eos_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    steps = math.ceil(len(seqs) / cfg.batch_size) * cfg.epochs
    work = out.parent / f".{out.name}.work"
    shutil.rmtree(work, ignore_errors=True)
    args = TrainingArguments(
        output_dir=str(work), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=max(1, int(cfg.warmup_ratio * steps)), weight_decay=cfg.weight_decay,
        logging_steps=max(1, int(steps) // 40), logging_first_step=True, save_strategy="no",
        report_to="none", seed=seed, data_seed=seed, bf16=False, fp16=False,
        use_cpu=not torch.cuda.is_available(), disable_tqdm=not progress,
        dataloader_num_workers=0, train_sampling_strategy="group_by_length",
        remove_unused_columns=False)
    train_ds = HFDataset.from_dict({"input_ids": seqs, "length": [len(s) for s in seqs]})
    trainer = Trainer(model=model, args=args, train_dataset=train_ds,
                      data_collator=_Collator(tokenizer.pad_token_id))
    if not progress:
        trainer.remove_callback(PrinterCallback)  # no per-step loss dicts on stdout either
    t1, c1 = time.perf_counter(), time.process_time()
    try:
        result = trainer.train()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    train_s, cpu_s = time.perf_counter() - t1, time.process_time() - c1
    losses = [(h["step"], round(float(h["loss"]), 4)) for h in trainer.state.log_history if "loss" in h]
    model = trainer.model.to("cpu").eval()
    info = {"preset": cfg.name, "preset_config": asdict(cfg), "seed": seed, "dataset": dataset.name,
            "data_hash": data_hash(titles, queries), "n_titles": len(titles), "n_queries": len(queries),
            "n_tokens": n_tokens, "n_params": n_params, "tokenizer_seconds": round(tok_s, 2),
            "train_seconds": round(train_s, 2), "train_cpu_seconds": round(cpu_s, 2),
            "tokens_per_second": round(n_tokens * cfg.epochs / train_s, 1),
            "train_loss": round(float(result.training_loss), 4),
            "first_loss": losses[0][1] if losses else None,
            "final_loss": losses[-1][1] if losses else None, "loss_log": losses,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    save_backbone(model, tokenizer, out, overwrite, **info)
    return out


def default_backbone(dataset, preset: str | Preset = "small", seed: int = 0,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """The embedded backbone for ``dataset``: pretrained on first use, then reused from
    ``cache_dir`` (default ``$GENRET_CACHE`` or ``./.cache``), keyed by preset, seed and
    the hash of the texts it learns from. A cached one is verified (sizes and sha256) on
    every use; a damaged one is a BackboneError saying to delete it."""
    cfg = get_preset(preset)
    titles, queries = training_texts(dataset, cfg, seed)
    key = f"{cfg.name}-seed{seed}-{data_hash(titles, queries).split(':')[1]}"
    root = Path(cache_dir or os.environ.get("GENRET_CACHE") or Path.cwd() / ".cache")
    path = root / "backbones" / key
    if path.exists():
        try:
            read_manifest(path, kind=KIND, rebuild=f"delete {path} (the cached backbone) and "
                                                   "genret pretrains it again on next use")
        except ArtifactError as e:
            raise BackboneError(str(e)) from None
    else:
        with preserved_rng():  # a cache miss must not change what the caller draws next
            pretrain(dataset, path, cfg, seed, progress=progress)
    return path


@contextlib.contextmanager
def preserved_rng():
    """Restore the torch (CPU and CUDA), numpy and ``random`` global generators on exit:
    pretraining seeds and draws from all of them."""
    import random

    states = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng():
            yield
    finally:
        np.random.set_state(states[0])
        random.setstate(states[1])
