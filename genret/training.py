"""SFT (LoRA or full) and DPO through trl, shared by every generative channel.

SFT takes pre-tokenised (prompt ids, completion ids) pairs, so targets sliced from a
title's own token ids reach the model unchanged; the loss is on the completion only.
DPO trains a fresh LoRA adapter on top of the (merged) SFT model: the reference model is
the same network with the adapter disabled. The trainer arguments are genret's
``TrainConfig`` fields, then any SFTConfig/DPOConfig argument in ``train.trainer``
(:func:`trainer_settings`; docs/training.md). Both run through the HF Trainer, so they
scale out with ``accelerate launch`` and resume from ``out_dir`` checkpoints, but only
those of the same run: ``genret_run.json`` there keys them by everything that determines
the result (see :func:`run_key`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import operator
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .retriever import check_settings

# the attention and MLP projections LoRA adapts by default, per architecture family
LORA_TARGETS = {"q_proj": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "query": ["query", "key", "value", "dense"]}  # Qwen/Llama-style; BERT (MiniLM)


@dataclass
class TrainConfig:
    """Fine-tuning settings; defaults fit 2 CPU cores. ``trainer`` passes any other
    argument of trl's SFTConfig / DPOConfig through (docs/training.md)."""

    full: bool = False  # full fine-tuning instead of LoRA (sensible for small backbones)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] | None = None  # None: the model's attention + MLP projections
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_length: int = 96
    seed: int = 0
    dpo_beta: float = 0.1
    dpo_learning_rate: float = 5e-5  # dev choice on MiniLM + LoRA (5e-4 lowered recall there; the 6.2M LM used it)
    dpo_epochs: float = 1.0
    dpo_batch_size: int = 16
    dpo_sft_weight: float = 0.0  # > 0: add NLL of the chosen completion (RPO), keeps chosen likely
    save_steps: int = 500
    progress: bool = True
    trainer: dict = field(default_factory=dict)  # SFTConfig/DPOConfig arguments, merged last

    def __post_init__(self):
        check_config(self, "train", lora_r=">= 1", lora_alpha="> 0", batch_size=">= 1",
                     learning_rate="> 0", max_length=">= 2", dpo_beta="> 0", dpo_learning_rate="> 0",
                     dpo_batch_size=">= 1", save_steps=">= 1", seed=">= 0")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"train.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if not self.dpo_sft_weight >= 0:
            raise ValueError(f"train.dpo_sft_weight must be >= 0 (0 = plain DPO), got {self.dpo_sft_weight}")
        if self.max_steps != -1 and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be -1 (train by epochs) or > 0, got {self.max_steps}")
        for name in ("epochs", "dpo_epochs"):
            if self.max_steps == -1 and getattr(self, name) <= 0:
                raise ValueError(f"train.{name} must be > 0 (or set train.max_steps > 0), got {getattr(self, name)}")
        if self.lora_targets is not None and not self.lora_targets:
            raise ValueError("train.lora_targets is empty: name the modules LoRA adapts, e.g. [q_proj, v_proj], "
                             "or leave it out (null) for the model's attention and MLP projections")
        if self.trainer:
            self.trainer = _check_trainer(self.trainer)
            with tempfile.TemporaryDirectory(prefix="genret-args-") as tmp:
                for stage, config in _trl_configs().items():  # trl's own checks, once, now
                    try:
                        config(**trainer_settings(self, stage, Path(tmp)))
                    except (TypeError, ValueError) as e:
                        raise ValueError(f"train.trainer: {' '.join(str(e).split())}") from None


# Trainer arguments genret sets from its own fields: ``train.trainer`` may not set them
GENRET_ARGS = {"output_dir": "the fit's out_dir", "num_train_epochs": "train.epochs / train.dpo_epochs",
               "max_steps": "train.max_steps", "per_device_train_batch_size": "train.batch_size / train.dpo_batch_size",
               "learning_rate": "train.learning_rate / train.dpo_learning_rate", "seed": "train.seed",
               "data_seed": "train.seed", "max_length": "train.max_length", "save_steps": "train.save_steps",
               "disable_tqdm": "train.progress", "beta": "train.dpo_beta"}


def _trl_configs() -> dict:
    from trl import DPOConfig, SFTConfig

    return {"sft": SFTConfig, "dpo": DPOConfig}


def _check_trainer(trainer: dict) -> dict:
    """``train.trainer`` checked: names of SFTConfig/DPOConfig arguments that genret does
    not set itself, values of their types; returned with numbers given as strings parsed."""
    configs = _trl_configs()
    names = {stage: {f.name for f in dataclasses.fields(c) if f.init} for stage, c in configs.items()}
    for name in trainer:
        if name in GENRET_ARGS:
            raise ValueError(f"train.trainer.{name}: genret sets it from {GENRET_ARGS[name]}; set that instead")
        if not any(name in n for n in names.values()):
            near = difflib.get_close_matches(name, set().union(*names.values()), n=1)
            raise ValueError(f"train.trainer.{name}: not an argument of trl's SFTConfig or DPOConfig"
                             + (f" (did you mean {near[0]!r}?)" if near else "") + "; see docs/training.md")
    checked = {}
    for stage, config in configs.items():
        checked |= check_settings(config, {k: v for k, v in trainer.items() if k in names[stage]},
                                  "train.trainer", prefix="train.trainer.")
    return checked


_OPS = {">": operator.gt, ">=": operator.ge}


def check_config(cfg, owner: str, **rules: str) -> None:
    """Check the dataclass ``cfg`` in place: field types (numbers given as strings are
    parsed, see :func:`genret.retriever.check_settings`) and ``rules`` such as
    ``batch_size=">= 1"`` (None passes). A one-line ValueError names ``owner.field``;
    ``owner`` "" for top-level settings."""
    prefix = f"{owner}." if owner else ""
    for name, value in check_settings(type(cfg), vars(cfg), owner or type(cfg).__name__, prefix=prefix).items():
        setattr(cfg, name, value)
    for name, rule in rules.items():
        op, limit = rule.split()
        value = getattr(cfg, name)
        if value is not None and not _OPS[op](value, float(limit)):
            raise ValueError(f"{prefix}{name} must be {rule}, got {value!r}")


def trainer_settings(cfg: TrainConfig, stage: str, out_dir: Path) -> dict:
    """The SFTConfig (``stage`` "sft") or DPOConfig ("dpo") arguments of ``cfg``: genret's
    fields and defaults, then those of ``cfg.trainer`` that this stage's config has."""
    sft = stage == "sft"
    out = dict(output_dir=str(out_dir), num_train_epochs=cfg.epochs if sft else cfg.dpo_epochs,
               max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size if sft else cfg.dpo_batch_size,
               learning_rate=cfg.learning_rate if sft else cfg.dpo_learning_rate, lr_scheduler_type="cosine",
               warmup_steps=0.03, logging_steps=20, save_steps=cfg.save_steps, save_total_limit=1,
               seed=cfg.seed, data_seed=cfg.seed, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
               activation_checkpointing=False, gradient_checkpointing=None, report_to="none",
               disable_tqdm=not cfg.progress, dataloader_num_workers=0, max_length=cfg.max_length,
               save_only_model=False)
    if sft:
        out.update(completion_only_loss=True, packing=False)
    else:
        out["beta"] = cfg.dpo_beta
        if cfg.dpo_sft_weight:
            out.update(loss_type=["sigmoid", "sft"], loss_weights=[1.0, float(cfg.dpo_sft_weight)])
    if cfg.trainer:  # only then is trl imported
        names = {f.name for f in dataclasses.fields(_trl_configs()[stage])}
        out.update((k, v) for k, v in cfg.trainer.items() if k in names)
    return out


def lora_targets(model, cfg: TrainConfig) -> list[str]:
    """``cfg.lora_targets``, or the model's attention and MLP projections by family."""
    if cfg.lora_targets is not None:
        return list(cfg.lora_targets)
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for marker, targets in LORA_TARGETS.items():
        if marker in leaves:
            return list(targets)
    raise ValueError(f"no known attention projections in {type(model).__name__}; set train.lora_targets "
                     "to the names of the Linear modules LoRA should adapt")


def _embedding_name(model) -> str:
    emb = model.get_input_embeddings()
    return next(name.rsplit(".", 1)[-1] for name, m in model.named_modules() if m is emb)


def _lora(model, cfg: TrainConfig, trainable_tokens: list[int] | None):
    from peft import LoraConfig

    extra = ({"trainable_token_indices": {_embedding_name(model): list(trainable_tokens)}}
             if trainable_tokens else {})
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_targets(model, cfg), task_type="CAUSAL_LM", **extra)


def _lora_settings(cfg: TrainConfig) -> dict:
    return dict(r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, targets=cfg.lora_targets)


@contextlib.contextmanager
def _tied_head_bias_compat():
    """Let trl's fused LM head read ``lm_head.bias`` through peft's ``TrainableTokensWrapper``.

    With ``trainable_token_indices`` on a model with tied embeddings, peft (0.21) wraps
    the LM head too and answers only ``.weight`` (the merged, trainable weights); trl
    (1.16) computes the SFT loss from ``lm_head.weight`` and ``lm_head.bias`` and fails on
    the latter. While active, ``.bias`` returns the wrapped layer's bias (None for
    Qwen2). Scoped to one training call; a no-op if peft's layout differs.
    """
    try:
        from peft.utils.other import TrainableTokensWrapper as W
        orig_has, orig_get = W._hasattr_wrapped, W._getattr_wrapped
    except (ImportError, AttributeError):
        yield
        return

    def has(self, name, modules):
        return name == "bias" or orig_has(self, name, modules)

    def get(self, name, modules):
        if name == "bias":
            return getattr(self.token_adapter.base_layer, "bias", None)
        return orig_get(self, name, modules)

    W._hasattr_wrapped, W._getattr_wrapped = has, get
    try:
        yield
    finally:
        W._hasattr_wrapped, W._getattr_wrapped = orig_has, orig_get


@contextlib.contextmanager
def _score_labelled_positions_only():
    """Let trl's fused LM head score only the positions that carry a label, on CPU too.

    trl (1.16) scores only labelled positions on Triton devices, and *every* position
    elsewhere (fixed tile shapes for compilers such as Neuron's). On CPU nothing is
    compiled, and with a completion-only loss most positions are prompt or padding (a
    semantic-ID example: a title prompt, then 3-4 ID tokens), so the output layer, a third
    to a half of a MiniLM step, mostly computes values that are then zeroed. Exact: those
    positions contribute zero either way. Scoped to one training call; a no-op if trl's
    layout differs.
    """
    try:
        import trl.trainer.utils as tu
        orig = tu._use_triton
    except (ImportError, AttributeError):
        yield
        return
    tu._use_triton = lambda device: device.type == "cpu" or orig(device)
    try:
        yield
    finally:
        tu._use_triton = orig


def _plain_forward(model):
    """Drop the instance ``forward`` the trainer stack leaves on a trained model (a closure
    over the original object): with it, ``copy.deepcopy(model)`` silently runs the
    original's weights. The class ``forward`` is the same computation."""
    vars(model).pop("forward", None)
    return model


# ----------------------------------------------------------------------------- training state

KEY_FILE = "genret_run.json"  # in a trainer's out_dir: the key of the run its checkpoints belong to
MODEL_CARD = "README.md"  # trl writes one into out_dir with every checkpoint
# model-config fields that are no architecture: the Trainer itself rewrites the token ids (to the
# tokenizer's, keyed apart) and use_cache while training, so a model saved after training and the
# same weights reloaded from its finished checkpoint differ there (a DPO from either would restart)
_NOT_ARCHITECTURE = ("_name_or_path", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id",
                     "transformers_version")
_UNKEYED = ("output_dir", "disable_tqdm", "logging_steps", "save_steps", "save_total_limit")  # change no weight
# what the HF Trainer writes into a checkpoint that resuming needs (any one pattern of each)
_CHECKPOINT_FILES = {"weights": ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                                 "pytorch_model.bin", "adapter_model.bin", "pytorch_model_fsdp*"),
                     "optimizer state": ("optimizer.pt", "optimizer.bin", "optimizer_*"),
                     "scheduler state": ("scheduler.pt",)}


@contextlib.contextmanager
def work_dir(out_dir: str | os.PathLike | None, prefix: str):
    """``out_dir`` as a Path (training state kept there for a resume), or with None a
    temporary directory removed on exit."""
    if out_dir is not None:
        yield Path(out_dir)
        return
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def weights_fingerprint(model) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``model``'s state dict."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{t.numel()};".encode())
        h.update(t.view(torch.uint8).numpy().data)
    return "sha256:" + h.hexdigest()


def run_key(stage: str, settings: dict, data, model, tokenizer) -> dict:
    """What determines a training run's result: the trainer settings (bar logging and
    saving), the exact training data, the initial weights and architecture, the tokenizer,
    the number of processes and the library versions; ``key`` hashes them all."""
    from importlib.metadata import version

    from .backbone import tokenizer_identity

    arch = {k: v for k, v in model.config.to_dict().items() if k not in _NOT_ARCHITECTURE}
    parts = {"stage": stage, "settings": {k: v for k, v in settings.items() if k not in _UNKEYED},
             "data": _digest(data), "weights": weights_fingerprint(model), "architecture": _digest(arch),
             "tokenizer": tokenizer_identity(tokenizer), "processes": int(os.environ.get("WORLD_SIZE", "1")),
             "versions": {p: version(p) for p in ("torch", "transformers", "trl", "peft")}}
    return {"key": _digest(parts), **json.loads(json.dumps(parts, default=str))}


def _notice(text: str) -> None:
    print(f"genret: {text}", file=sys.stderr)


def _checkpoints(out_dir: Path) -> list[Path]:
    """The ``checkpoint-N`` directories of ``out_dir``, by step."""
    found = [(int(m.group(1)), p) for p in out_dir.glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found)]


def _nonempty(p: Path) -> bool:
    return p.stat().st_size > 0 if p.is_file() else p.is_dir() and any(p.iterdir())


def _incomplete(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be resumed (a run stopped while writing it), or None. The
    Trainer writes trainer_state.json last; the files before it must be there too."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    for what, patterns in _CHECKPOINT_FILES.items():
        if not any(_nonempty(p) for pattern in patterns for p in ckpt.glob(pattern)):
            return f"its {what} file is missing or empty"
    return None


def _changes(old: dict, new: dict) -> str:
    """The parts of a run key that differ, for a notice: setting names, else part names."""
    diff = [k for k in sorted(set(old.get("settings", {})) | set(new["settings"]))
            if old.get("settings", {}).get(k) != new["settings"].get(k)]
    return ", ".join(diff + [k for k in new if k not in ("key", "settings") and old.get(k) != new[k]])


def prepare_out_dir(out_dir: Path, run: dict) -> None:
    """Leave in ``out_dir`` only complete checkpoints of the run keyed ``run`` (see
    :func:`run_key`): another run's checkpoints and incomplete ones are removed, each with a
    one-line notice. A directory holding anything else (no key file: not genret's) is refused."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory; train into another directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    key_file = out_dir / KEY_FILE
    ckpts = _checkpoints(out_dir)
    tmp = out_dir / f".{KEY_FILE}.tmp"
    names = sorted(p.name for p in out_dir.iterdir() if p != tmp)
    foreign = [n for n in names if n not in {KEY_FILE, MODEL_CARD} | {p.name for p in ckpts}]
    if foreign:
        raise ValueError(f"{out_dir}: holds files that are not genret training state ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); move them or train into another directory")
    if names and not key_file.is_file():
        raise ValueError(f"{out_dir}: holds {', '.join(names[:3])} but no {KEY_FILE} (not this genret's training "
                         "state), so what it was trained on is unknown; delete it or train into another directory")
    if key_file.is_file():
        try:
            old = json.loads(key_file.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("key") != run["key"]:
            if ckpts:
                what = _changes(old, run) if old else f"unreadable {KEY_FILE}"
                _notice(f"settings changed since the checkpoints in {out_dir} were written ({what}); starting over")
            for p in ckpts:  # under the old key file: a stop half-way still reads as stale
                shutil.rmtree(p)
            ckpts = []
    for p in ckpts:
        why = _incomplete(p)
        if why:
            _notice(f"{p} is incomplete ({why}: a run stopped while writing it); removed it")
            shutil.rmtree(p)
    tmp.write_text(json.dumps(run, indent=1, sort_keys=True))
    os.replace(tmp, key_file)


def resume_from(out_dir: Path, run: dict) -> str | None:
    """Prepare ``out_dir`` (on the main process) and return the checkpoint to resume, if any."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        prepare_out_dir(out_dir, run)
    state.wait_for_everyone()
    last = _checkpoints(out_dir)[-1:]
    if last and state.is_main_process:
        _notice(f"resuming {run['stage']} from {last[0]} (same settings, data and model)")
    return str(last[0]) if last else None


def train_resumable(trainer, resume: str | None) -> None:
    """``trainer.train()``, resuming from the checkpoint ``resume``. The checkpoint of a
    finished run is only loaded: the Trainer would train one step past ``max_steps``.
    Without progress bars (``disable_tqdm``) the log stays in ``trainer_state.json``
    instead of HF's printing every log dict to stdout."""
    from transformers.trainer_callback import PrinterCallback

    if trainer.args.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    done = resume and json.loads((Path(resume) / "trainer_state.json").read_text())
    if done and done["global_step"] >= done["max_steps"] and not (trainer.is_fsdp_enabled
                                                                   or trainer.is_deepspeed_enabled):
        trainer._load_from_checkpoint(resume)
    else:
        trainer.train(resume_from_checkpoint=resume)


def sft(model, tokenizer, examples: list[tuple[list[int], list[int]]], out_dir: str | os.PathLike,
        cfg: TrainConfig, trainable_tokens: list[int] | None = None):
    """Supervised fine-tuning on (prompt ids, completion ids); EOS is appended to each
    completion. Under LoRA the embedding rows of ``trainable_tokens`` and of the genret
    markers and EOS (new rows in a pretrained vocabulary such as MiniLM's) are trained too.
    Returns the trained model with any LoRA adapter merged in."""
    from datasets import Dataset as HFDataset
    from trl import SFTConfig, SFTTrainer

    from .backbone import special_ids

    if not cfg.full:
        sp = special_ids(tokenizer)
        trainable_tokens = sorted({*(trainable_tokens or []), sp.sep, sp.eos, sp.query, sp.title, sp.id})

    if not examples:
        raise ValueError("no training examples: the dataset produced no (prompt, target) pairs")
    eos = tokenizer.eos_token_id
    rows = {"input_ids": [], "completion_mask": []}
    for p, c in examples:
        ids = (list(p) + list(c) + [eos])[: cfg.max_length]
        rows["input_ids"].append(ids)
        rows["completion_mask"].append(([0] * len(p) + [1] * (len(c) + 1))[: cfg.max_length])
    out_dir = Path(out_dir)
    settings = trainer_settings(cfg, "sft", out_dir)
    args = SFTConfig(**settings)
    keyed = dict(settings, lora=None if cfg.full else _lora_settings(cfg), trainable_tokens=trainable_tokens)
    resume = resume_from(out_dir, run_key("sft", keyed, rows, model, tokenizer))
    trainer = SFTTrainer(model=model, args=args, train_dataset=HFDataset.from_dict(rows),
                         processing_class=tokenizer,
                         peft_config=None if cfg.full else _lora(model, cfg, trainable_tokens))
    if cfg.full and trainable_tokens:
        model.get_input_embeddings().weight.requires_grad_(True)
    with _tied_head_bias_compat() if trainable_tokens else contextlib.nullcontext(), \
            _score_labelled_positions_only():
        train_resumable(trainer, resume)
    trained = trainer.model
    return _plain_forward(trained.merge_and_unload() if hasattr(trained, "merge_and_unload") else trained)


def dpo(model, tokenizer, pairs: list[dict], out_dir: str | os.PathLike, cfg: TrainConfig):
    """DPO on {"prompt", "chosen", "rejected"} texts with a LoRA adapter (reference =
    adapter disabled); with ``dpo_sft_weight`` > 0 the loss adds that weight times the
    NLL of the chosen completion (RPO, Pang et al. 2024), which stops DPO from lowering
    the likelihood of both answers. Returns the model with the adapter merged in."""
    from datasets import Dataset as HFDataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ValueError("no preference pairs were mined: DPO needs at least one "
                         "(chosen, rejected) pair; decode more beams or more training queries")
    out_dir = Path(out_dir)
    settings = trainer_settings(cfg, "dpo", out_dir)
    args = DPOConfig(**settings)
    resume = resume_from(out_dir, run_key("dpo", dict(settings, lora=_lora_settings(cfg)), pairs, model,
                                           tokenizer))
    trainer = DPOTrainer(model=model, ref_model=None, args=args,
                         train_dataset=HFDataset.from_list(pairs), processing_class=tokenizer,
                         peft_config=_lora(model, cfg, None))
    with _score_labelled_positions_only():
        train_resumable(trainer, resume)
    return _plain_forward(trainer.model.merge_and_unload())
