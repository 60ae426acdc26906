"""The HF ``Trainer`` under the contrastive encoders (dense and sparse).

Both train on a *schedule* of global batches drawn up front from one seeded generator
(each step's examples and the positives and negatives sampled for them, in the order the
former hand-written loops drew them), so one process reproduces those loops step for
step. The dataset the Trainer sees is the schedule's row numbers, in order: under
``torchrun`` (or ``accelerate launch --multi_gpu``, which runs it; ``--cpu`` starts one
process) process r takes the r-th slice of every global batch.
Each process encodes its slice, :func:`gather_cat` joins the slices (with gradients) and
every process computes the loss of the whole global batch, so in-batch negatives, masks
and FLOPS span it exactly as on one process, and DDP's gradient averaging gives the
one-process gradient. ``batch_size`` is per process; a step trains on
``batch_size × processes`` examples.

Checkpoints and resuming follow :mod:`genret.training`: ``out_dir`` keeps the checkpoints
of one run (:func:`genret.training.run_key`); a re-run with the same settings, data and
model resumes there.
"""

from __future__ import annotations

import json
import os
import types
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import TrainerCallback

from .training import resume_from, train_resumable


def world() -> tuple[int, int]:
    """(rank, number of processes): torch.distributed's once it is set up, before that the
    launcher's RANK / WORLD_SIZE ((0, 1) without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class _GatherCat(torch.autograd.Function):
    """All processes' rows in rank order; backward sums what every process's loss sends
    to a process's rows (the semantics of ``torch.distributed.nn.all_gather``, on gloo too)."""

    @staticmethod
    def forward(ctx, x):
        n = torch.tensor([x.shape[0]], device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
        dist.all_gather(sizes, n)
        ctx.sizes, ctx.rank = [int(s) for s in sizes], dist.get_rank()
        buf = x.new_zeros((max(ctx.sizes), *x.shape[1:]))
        buf[: x.shape[0]] = x
        parts = [torch.empty_like(buf) for _ in ctx.sizes]
        dist.all_gather(parts, buf)
        return torch.cat([p[:s] for p, s in zip(parts, ctx.sizes)])

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start: start + ctx.sizes[ctx.rank]]


def gather_cat(x: torch.Tensor) -> torch.Tensor:
    """Every process's ``x`` (rows may differ in number) concatenated along dim 0 in rank
    order, differentiably; ``x`` itself on one process."""
    return _GatherCat.apply(x) if world()[1] > 1 else x


def epoch_batches(n: int, batch: int, steps: int, rng):
    """``steps`` arrays of ``batch`` indices out of ``n``: a seeded permutation cut in batches,
    a new one when the rest would not fill one (drawn from ``rng`` lazily, step by step)."""
    order, at = rng.permutation(n), 0
    for _ in range(steps):
        if at + batch > n:
            order, at = rng.permutation(n), 0
        yield order[at: at + batch]
        at += batch


def warmup_linear(warm: int, total: int):
    """LR factor of step s: linear warm-up ``(s + 1) / warm``, then linear decay to 0 at ``total``."""
    def factor(s: int) -> float:
        return min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm)))
    return factor


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _collate(rows: list[int]) -> dict:
    return {"rows": torch.tensor(rows)}


class _LogLastStep(TrainerCallback):
    """Log the last step too (the former loops did; the Trainer logs every ``logging_steps``)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_log = True
        return control


class ContrastiveTrainer(Trainer):
    """A Trainer over a schedule of global batches (see the module docstring); ``task``
    gives the optimizer's parameter groups and each step's loss (see :func:`train_schedule`)."""

    def __init__(self, task, model, args: TrainingArguments):
        self.task = task
        self._terms: list[dict] = []
        super().__init__(model=model, args=args, train_dataset=_Rows(len(task.schedule) * task.global_batch),
                         data_collator=_collate, callbacks=[_LogLastStep()])

    # -- data: the schedule's rows in order, a private generator (the global RNG feeds dropout)
    def get_train_dataloader(self):
        loader = torch.utils.data.DataLoader(self.train_dataset, batch_size=self._train_batch_size,
                                             shuffle=False, collate_fn=self.data_collator,
                                             generator=torch.Generator())
        return self.accelerator.prepare(loader)

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, self.model)
            self.optimizer = cls([g for g in self.task.param_groups() if g["params"]], **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, warmup_linear(self.task.warmup, num_training_steps))
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rows, batch = inputs["rows"].tolist(), self.task.global_batch
        loss, terms = self.task.step_loss(model, rows[0] // batch, [r % batch for r in rows])
        self._terms.append(terms)
        return loss

    def log(self, logs: dict, start_time: float | None = None) -> None:
        if self._terms:  # a training-step log: the task's named terms replace the Trainer's loss
            if self.task.log_mean:
                terms = {k: sum(t[k] for t in self._terms) / len(self._terms) for k in self._terms[-1]}
            else:
                terms = self._terms[-1]
            logs = {**terms, "lr": self.lr_scheduler.get_last_lr()[0]}  # as the former loops: after the step
            self._terms = []
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Weights as safetensors (tied weights saved once), without the HF model files."""
        from safetensors.torch import save_model

        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_model(self.accelerator.unwrap_model(self.model), os.path.join(output_dir, "model.safetensors"))


def training_args(out_dir: Path, *, steps: int, batch_size: int, lr: float, weight_decay: float, seed: int,
                  log_every: int, log_first: bool, save_steps: int, progress: bool) -> TrainingArguments:
    """The Trainer settings of the contrastive encoders (AdamW, gradient norm clipped at 1)."""
    return TrainingArguments(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr,
        weight_decay=weight_decay, max_grad_norm=1.0, optim="adamw_torch", seed=seed, logging_steps=log_every,
        logging_first_step=log_first, save_steps=save_steps, save_total_limit=1, save_only_model=False,
        report_to="none", disable_tqdm=not progress, dataloader_num_workers=0, dataloader_pin_memory=False,
        remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False)


def keyed(module: torch.nn.Module, config) -> types.SimpleNamespace:
    """What :func:`genret.training.run_key` reads of a model: the HF ``config`` of its
    backbone and the state dict of the whole ``module`` (heads included)."""
    return types.SimpleNamespace(config=config, state_dict=module.state_dict)


def train_schedule(task, model, args: TrainingArguments, run: dict) -> list[dict]:
    """Train ``model`` on ``task`` (attributes ``schedule``: one entry per step,
    ``global_batch``, ``warmup`` steps, ``log_mean``: log the mean of the terms since the last
    log, else the step's own; methods ``param_groups()`` and ``step_loss(model, step, local)``
    -> (loss, named float terms) of global batch ``step``, of which this process encodes the
    examples ``local``), resuming the last checkpoint of the run keyed ``run`` in
    ``args.output_dir``. Returns the log: per logged step ``step``, the terms and ``lr``."""
    resume = resume_from(Path(args.output_dir), run)
    trainer = ContrastiveTrainer(task, model, args)
    train_resumable(trainer, resume)
    history = trainer.state.log_history
    if resume and trainer.state.global_step == 0:  # a finished run: weights loaded, nothing trained
        history = json.loads((Path(resume) / "trainer_state.json").read_text())["log_history"]
    return [{"step": e["step"], **{k: v for k, v in e.items() if k not in ("step", "epoch")}}
            for e in history if "lr" in e]
