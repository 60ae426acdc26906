"""SFT (LoRA or full) and DPO through trl, shared by every generative channel.

SFT takes pre-tokenised (prompt ids, completion ids) pairs, so targets sliced from a
title's own token ids reach the model unchanged; the loss is on the completion only.
DPO trains a fresh LoRA adapter on top of the (merged) SFT model: the reference model is
the same network with the adapter disabled. Both run through the HF Trainer, so they
scale out with ``accelerate launch`` and resume from ``out_dir`` checkpoints.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TrainConfig:
    """Fine-tuning settings; defaults fit 2 CPU cores."""

    full: bool = False  # full fine-tuning instead of LoRA (sensible for small backbones)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 32
    learning_rate: float = 1e-3
    max_length: int = 96
    seed: int = 0
    dpo_beta: float = 0.1
    dpo_learning_rate: float = 5e-4
    dpo_epochs: float = 1.0
    dpo_batch_size: int = 16
    dpo_sft_weight: float = 0.0  # > 0: add NLL of the chosen completion (RPO), keeps chosen likely
    save_steps: int = 500
    progress: bool = True

    def __post_init__(self):
        if not self.dpo_sft_weight >= 0:  # also refuses NaN
            raise ValueError(f"train.dpo_sft_weight must be >= 0 (0 = plain DPO), got {self.dpo_sft_weight}")


def _common_args(cfg: TrainConfig, out_dir: Path, lr: float, epochs: float, batch: int) -> dict:
    return dict(output_dir=str(out_dir), num_train_epochs=epochs, max_steps=cfg.max_steps,
                per_device_train_batch_size=batch, learning_rate=lr, lr_scheduler_type="cosine",
                warmup_steps=0.03, logging_steps=20, save_steps=cfg.save_steps, save_total_limit=1,
                seed=cfg.seed, data_seed=cfg.seed, bf16=False, fp16=False, use_cpu=not torch.cuda.is_available(),
                activation_checkpointing=False, gradient_checkpointing=None, report_to="none", disable_tqdm=not cfg.progress,
                dataloader_num_workers=0, max_length=cfg.max_length, save_only_model=False)


def _lora(cfg: TrainConfig, trainable_tokens: list[int] | None):
    from peft import LoraConfig

    extra = {"trainable_token_indices": {"embed_tokens": list(trainable_tokens)}} if trainable_tokens else {}
    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, task_type="CAUSAL_LM", **extra)


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


def _plain_forward(model):
    """Drop the instance ``forward`` the trainer stack leaves on a trained model (a closure
    over the original object): with it, ``copy.deepcopy(model)`` silently runs the
    original's weights. The class ``forward`` is the same computation."""
    vars(model).pop("forward", None)
    return model


def _resume(out_dir: Path) -> bool:
    return any(p.name.startswith("checkpoint-") for p in out_dir.glob("checkpoint-*"))


def sft(model, tokenizer, examples: list[tuple[list[int], list[int]]], out_dir: str | os.PathLike,
        cfg: TrainConfig, trainable_tokens: list[int] | None = None):
    """Supervised fine-tuning on (prompt ids, completion ids); EOS is appended to each
    completion. Returns the trained model with any LoRA adapter merged in."""
    from datasets import Dataset as HFDataset
    from trl import SFTConfig, SFTTrainer

    if not examples:
        raise ValueError("no training examples: the dataset produced no (prompt, target) pairs")
    eos = tokenizer.eos_token_id
    rows = {"input_ids": [], "completion_mask": []}
    for p, c in examples:
        ids = (list(p) + list(c) + [eos])[: cfg.max_length]
        rows["input_ids"].append(ids)
        rows["completion_mask"].append(([0] * len(p) + [1] * (len(c) + 1))[: cfg.max_length])
    out_dir = Path(out_dir)
    args = SFTConfig(**_common_args(cfg, out_dir, cfg.learning_rate, cfg.epochs, cfg.batch_size),
                     completion_only_loss=True, packing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=HFDataset.from_dict(rows),
                         processing_class=tokenizer,
                         peft_config=None if cfg.full else _lora(cfg, trainable_tokens))
    if cfg.full and trainable_tokens:
        model.get_input_embeddings().weight.requires_grad_(True)
    with _tied_head_bias_compat() if trainable_tokens else contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=_resume(out_dir) or None)
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
    loss = (dict(loss_type=["sigmoid", "sft"], loss_weights=[1.0, float(cfg.dpo_sft_weight)])
            if cfg.dpo_sft_weight else {})
    out_dir = Path(out_dir)
    args = DPOConfig(**_common_args(cfg, out_dir, cfg.dpo_learning_rate, cfg.dpo_epochs,
                                    cfg.dpo_batch_size), beta=cfg.dpo_beta, **loss)
    trainer = DPOTrainer(model=model, ref_model=None, args=args,
                         train_dataset=HFDataset.from_list(pairs), processing_class=tokenizer,
                         peft_config=_lora(cfg, None))
    trainer.train(resume_from_checkpoint=_resume(out_dir) or None)
    return _plain_forward(trainer.model.merge_and_unload())
