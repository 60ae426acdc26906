"""Pretraining the embedded default backbone.

No model hub is reachable here, so the default backbone is built locally by
:func:`pretrain`: a byte-level BPE tokenizer (HF ``tokenizers``) and a small
Qwen2-architecture causal LM trained from scratch with the HF Trainer on the catalog
titles and the **train-split** queries (never dev/test). It is saved as an ordinary HF
directory through ``save_backbone``, so everything downstream loads it the way it would
load a real checkpoint. :func:`default_backbone` caches it per preset, seed and data.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import cache_dir as genret_cache_dir
from ..artifact import ArtifactError, check_output_dir, read_manifest
from ..retriever import caller_rng
from .loading import KIND, save_backbone
from .tokenizer import (EOS, MARKERS, SPECIAL_TOKENS, BackboneError, _set_specials, encode_text,
                        encode_title, special_ids)


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
    root = Path(cache_dir) if cache_dir else genret_cache_dir()
    path = root / "backbones" / key
    if path.exists():
        try:
            read_manifest(path, kind=KIND, rebuild=f"delete {path} (the cached backbone) and "
                                                   "genret pretrains it again on next use")
        except ArtifactError as e:
            raise BackboneError(str(e)) from None
    else:
        with caller_rng():  # a cache miss must not change what the caller draws next
            pretrain(dataset, path, cfg, seed, progress=progress)
    return path


EMBEDDED = "embedded"


def resolve_backbone(backbone: str | None, preset: str | None, dataset=None, seed: int = 0,
                     progress: bool = False) -> str:
    """What a channel trains on: ``backbone`` when given (an HF path or name, or "minilm");
    genret's embedded LM of ``preset`` when ``preset`` is given or ``backbone="embedded"``
    (pretrained on ``dataset`` on first use, then cached: :func:`default_backbone`); else
    "minilm", the packaged all-MiniLM-L6-v2, the default since it won on dev for every
    channel measured (docs/backbone.md)."""
    if backbone == EMBEDDED or (backbone is None and preset is not None):
        if dataset is None:
            raise ValueError("the embedded backbone is pretrained on a dataset and none was given: pass "
                             "backbone=PATH (a `genret pretrain` directory or any HF model) or a dataset")
        return str(default_backbone(dataset, preset or "small", seed, progress=progress))
    return backbone or "minilm"
