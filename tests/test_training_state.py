"""Training state is keyed by what determines it: a re-run resumes only the same run,
another run starts over, half-written checkpoints are skipped, foreign folders refused."""

import json
import re

import pytest
import torch


@pytest.fixture(scope="module")
def tiny(synthetic):
    """The tiny backbone and a few SFT examples built from the synthetic titles."""
    from genret.backbone import default_backbone, load_backbone

    path = default_backbone(synthetic, "tiny", progress=False)
    _, tok = load_backbone(path)
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    return path, tok, [(ids(f"query {t.lower()}"), ids(t)) for t in synthetic.titles[:48]]


@pytest.fixture
def steps(monkeypatch):
    """Counts the training steps the HF Trainer takes."""
    import transformers

    count = [0]
    orig = transformers.Trainer.training_step

    def counting(self, *a, **kw):
        count[0] += 1
        return orig(self, *a, **kw)

    monkeypatch.setattr(transformers.Trainer, "training_step", counting)
    return count


def train(tiny, out_dir, examples=None, model=None, **cfg):
    """SFT on a fresh copy of the tiny backbone; returns the trained weights."""
    from genret.backbone import load_backbone
    from genret.training import TrainConfig, sft

    path, tok, ex = tiny
    model = model or load_backbone(path)[0]
    cfg = TrainConfig(**{"max_steps": 4, "save_steps": 2, "batch_size": 8, "progress": False, **cfg})
    return {k: v.clone() for k, v in sft(model, tok, examples or ex, out_dir, cfg).state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_run_resumes_without_training(tiny, steps, tmp_path, capsys):
    first = train(tiny, tmp_path, full=True)
    key = (tmp_path / "genret_run.json").read_text()
    assert steps[0] == 4 and json.loads(key)["settings"]["learning_rate"] == 1e-3
    steps[0] = 0
    again = train(tiny, tmp_path, full=True)
    assert steps[0] == 0 and same(first, again)
    assert (tmp_path / "genret_run.json").read_text() == key
    assert "resuming sft from" in capsys.readouterr().err


def test_config_fields_the_trainer_rewrites_do_not_restart_a_run(tiny, steps, tmp_path, capsys):
    """A model saved after training (the Trainer set its token ids and use_cache) and the
    same weights reloaded from a finished checkpoint are the same start for the next stage."""
    from genret.backbone import load_backbone

    first = train(tiny, tmp_path, full=True)
    model = load_backbone(tiny[0])[0]
    model.config.eos_token_id, model.config.use_cache = 12345, not model.config.use_cache
    steps[0] = 0
    again = train(tiny, tmp_path, full=True, model=model)
    assert steps[0] == 0 and same(first, again) and "resuming sft from" in capsys.readouterr().err


def test_other_learning_rate_starts_over(tiny, steps, tmp_path, capsys):
    first = train(tiny, tmp_path / "a")
    capsys.readouterr()
    other = train(tiny, tmp_path / "a", learning_rate=5e-3)
    err = capsys.readouterr().err
    assert "settings changed since the checkpoints in" in err and "(learning_rate); starting over" in err
    assert steps[0] == 8 and not same(first, other)
    assert same(other, train(tiny, tmp_path / "fresh", learning_rate=5e-3))
    assert json.loads((tmp_path / "a" / "genret_run.json").read_text())["settings"]["learning_rate"] == 5e-3


def test_other_data_and_vocabulary_start_over(tiny, steps, tmp_path, capsys):
    """Another dataset brings another backbone (here: a larger vocabulary) and other
    examples; resuming the old checkpoint would die on a size mismatch."""
    from genret.backbone import load_backbone

    train(tiny, tmp_path)
    model = load_backbone(tiny[0])[0]
    model.resize_token_embeddings(model.get_input_embeddings().num_embeddings + 8)
    capsys.readouterr()
    steps[0] = 0
    out = train(tiny, tmp_path, examples=tiny[2][::-1][:24], model=model)
    err = capsys.readouterr().err
    assert "starting over" in err and "data" in err and "weights" in err
    assert steps[0] == 4 and out["model.embed_tokens.weight"].shape[0] == model.config.vocab_size


def test_half_written_checkpoint_is_skipped(tiny, steps, tmp_path, capsys, monkeypatch):
    """A stop while checkpoint-4 is written (weights there, optimizer and state not): the
    next run removes it, resumes from checkpoint-2 and finishes like an uninterrupted run."""
    import transformers

    class Killed(Exception):
        pass

    orig = transformers.Trainer._save_optimizer_and_scheduler

    def dies_at_4(self, output_dir):
        if self.state.global_step == 4:
            raise Killed
        orig(self, output_dir)

    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", dies_at_4)
    with pytest.raises(Killed):
        train(tiny, tmp_path / "run", max_steps=6)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    monkeypatch.setattr(transformers.Trainer, "_save_optimizer_and_scheduler", orig)
    capsys.readouterr()
    steps[0] = 0
    resumed = train(tiny, tmp_path / "run", max_steps=6)
    err = capsys.readouterr().err
    assert "checkpoint-4 is incomplete (no readable trainer_state.json: a run stopped while writing it)" in err
    assert "resuming sft from" in err and "checkpoint-2" in err
    assert steps[0] == 4
    fresh = train(tiny, tmp_path / "fresh", max_steps=6)
    assert all(torch.allclose(resumed[k], fresh[k], atol=1e-5) for k in fresh)


@pytest.mark.parametrize("damage, why", [
    (lambda d: (d / "trainer_state.json").write_text((d / "trainer_state.json").read_text()[:40]),
     "no readable trainer_state.json"),
    (lambda d: (d / "optimizer.pt").write_bytes(b""), "its optimizer state file is missing or empty"),
    (lambda d: (d / "adapter_model.safetensors").unlink(), "its weights file is missing or empty"),
])
def test_damaged_only_checkpoint_starts_over(tiny, steps, tmp_path, capsys, damage, why):
    first = train(tiny, tmp_path)
    damage(tmp_path / "checkpoint-4")
    capsys.readouterr()
    steps[0] = 0
    again = train(tiny, tmp_path)
    assert f"checkpoint-4 is incomplete ({why}" in capsys.readouterr().err
    assert steps[0] == 4 and same(first, again)


@pytest.mark.parametrize("key_file", [False, True])
def test_foreign_files_are_refused_and_kept(tiny, tmp_path, key_file):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    if key_file:
        (tmp_path / "genret_run.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds files that are not genret training state \(notes.txt, sub\)"):
        train(tiny, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "sub").is_dir()
    assert (tmp_path / "genret_run.json").is_file() == key_file


@pytest.mark.parametrize("names", [["README.md"], ["checkpoint-100", "README.md"]])
def test_state_without_key_file_is_refused_and_kept(tiny, tmp_path, names):
    """A user's README.md, or checkpoints of an older genret: nothing says what they hold."""
    for n in names:
        (tmp_path / n).mkdir() if n.startswith("checkpoint") else (tmp_path / n).write_text("mine")
    with pytest.raises(ValueError, match="but no genret_run.json"):
        train(tiny, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert all((tmp_path / n).read_text() == "mine" for n in names if n == "README.md")


def test_dpo_resumes_only_the_same_run(tiny, steps, tmp_path, capsys):
    from genret.backbone import load_backbone
    from genret.training import TrainConfig, dpo

    path, tok, _ = tiny
    pairs = [{"prompt": f"query {i}", "chosen": " drill", "rejected": " hammer"} for i in range(8)]

    def run(**cfg):
        cfg = TrainConfig(**{"max_steps": 2, "save_steps": 1, "dpo_batch_size": 4, "progress": False, **cfg})
        return {k: v.clone() for k, v in dpo(load_backbone(path)[0], tok, pairs, tmp_path, cfg).state_dict().items()}

    first = run()
    steps[0] = 0
    assert same(first, run()) and steps[0] == 0
    assert not same(first, run(dpo_beta=0.5)) and steps[0] == 2
    assert "(beta); starting over" in capsys.readouterr().err


@pytest.mark.parametrize("setting, message", [
    ({"epochs": -1}, "train.epochs must be > 0 (or set train.max_steps > 0), got -1"),
    ({"dpo_epochs": 0}, "train.dpo_epochs must be > 0"),
    ({"max_steps": 0}, "train.max_steps must be -1 (train by epochs) or > 0, got 0"),
    ({"batch_size": 0}, "train.batch_size must be >= 1, got 0"),
    ({"learning_rate": "abc"}, "train.learning_rate: expected a float, got 'abc'"),
    ({"learning_rate": float("nan")}, "train.learning_rate: expected a finite float"),
    ({"learning_rate": -1e-3}, "train.learning_rate must be > 0"),
    ({"lora_r": 0}, "train.lora_r must be >= 1"),
    ({"lora_dropout": 1.0}, "train.lora_dropout must be in [0, 1)"),
    ({"max_length": 1}, "train.max_length must be >= 2"),
    ({"save_steps": 0}, "train.save_steps must be >= 1"),
    ({"dpo_beta": 0}, "train.dpo_beta must be > 0"),
    ({"full": "yes"}, "train.full: expected a boolean"),
])
def test_train_config_refuses_bad_values(setting, message):
    from genret.training import TrainConfig

    with pytest.raises(ValueError, match=re.escape(message)):
        TrainConfig(**setting)


def test_train_config_parses_numbers_and_allows_steps_instead_of_epochs():
    from genret.training import TrainConfig

    cfg = TrainConfig(learning_rate="1e-3", epochs=0, max_steps=5)  # YAML reads 1e-3 as a string
    assert cfg.learning_rate == 1e-3 and cfg.max_steps == 5


@pytest.mark.parametrize("module, cls, setting, message", [
    ("lexical", "MultispanConfig", {"num_beams": 0}, "num_beams must be >= 1, got 0"),
    ("lexical", "MultispanConfig", {"max_new_tokens": -5}, "max_new_tokens must be >= 1"),
    ("lexical", "MultispanConfig", {"dpo_queries": -1}, "dpo_queries must be >= 1"),
    ("lexical", "MultispanConfig", {"max_spans": 0}, "max_spans must be >= 1"),
    ("lexical", "MultispanConfig", {"span_prob_cap": 1.5}, "span_prob_cap must be in (0, 1)"),
    ("semantic", "SemanticConfig", {"max_new_tokens": -1}, "max_new_tokens must be >= 1"),
    ("semantic", "SemanticConfig", {"decode_batch_size": 0}, "decode_batch_size must be >= 1"),
    ("semantic", "SemanticConfig", {"dpo_queries": 0}, "dpo_queries must be >= 1"),
])
def test_generative_configs_refuse_values_that_decode_nothing(module, cls, setting, message):
    import importlib

    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(importlib.import_module(f"genret.{module}"), cls)(**setting)


def test_cli_refuses_negative_epochs_in_one_line(synthetic_dir, tmp_path, capsys):
    from genret.cli import main

    assert main(["train", "--mode", "multispan", "--data", str(synthetic_dir), "--threshold", "2.5",
                 "--out", str(tmp_path / "m"), "--preset", "tiny", "--set", "train.epochs=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.epochs must be > 0" in err
    assert not (tmp_path / "m").exists()


def test_fit_on_another_dataset_into_the_same_work_dir(synthetic, tmp_path, capsys):
    """The case of the issue: another --data into the same --out (another backbone and
    vocabulary) trains afresh instead of dying on a size mismatch."""
    from genret.data import synthetic_dataset
    from genret.lexical import MultispanRetriever

    cfg = {"preset": "tiny", "num_beams": 2, "train": {"max_steps": 2, "batch_size": 8, "progress": False}}
    MultispanRetriever(**cfg).fit(synthetic, out_dir=str(tmp_path))
    capsys.readouterr()
    other = MultispanRetriever(**cfg).fit(synthetic_dataset(n_products=80, n_queries=60, seed=1), out_dir=str(tmp_path))
    assert "starting over" in capsys.readouterr().err and other.info["sft_examples"] > 0


def test_default_trainer_settings_are_the_ones_genret_always_used(tmp_path):
    """Configs without ``trainer`` train as before and keep their run keys (resume); the DPO
    learning rate default is the MiniLM dev choice (5e-5) since session 9."""
    from genret.training import TrainConfig, trainer_settings

    common = dict(output_dir=str(tmp_path), num_train_epochs=1.0, max_steps=-1, per_device_train_batch_size=32,
                  learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.03, logging_steps=20,
                  save_steps=500, save_total_limit=1, seed=0, data_seed=0, bf16=False, fp16=False,
                  use_cpu=not torch.cuda.is_available(), activation_checkpointing=False, gradient_checkpointing=None,
                  report_to="none", disable_tqdm=False, dataloader_num_workers=0, max_length=96,
                  save_only_model=False)
    assert trainer_settings(TrainConfig(), "sft", tmp_path) == dict(common, completion_only_loss=True, packing=False)
    dpo = trainer_settings(TrainConfig(dpo_sft_weight=0.5), "dpo", tmp_path)
    assert dpo == dict(common, num_train_epochs=1.0, per_device_train_batch_size=16, learning_rate=5e-5, beta=0.1,
                       loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])


def test_trainer_arguments_reach_both_stages_and_the_run_key(tiny, steps, tmp_path, capsys):
    from genret.training import TrainConfig, trainer_settings

    cfg = TrainConfig(trainer={"lr_scheduler_type": "constant", "weight_decay": "1e-2", "packing": False,
                               "label_smoothing": 0.1})
    assert cfg.trainer["weight_decay"] == 0.01  # numbers given as strings (YAML 1e-2) are parsed
    sft, dpo = trainer_settings(cfg, "sft", tmp_path), trainer_settings(cfg, "dpo", tmp_path)
    assert sft["lr_scheduler_type"] == dpo["lr_scheduler_type"] == "constant"
    assert "label_smoothing" not in sft and dpo["label_smoothing"] == 0.1  # a DPOConfig-only argument
    cosine = train(tiny, tmp_path, full=True)
    capsys.readouterr()
    constant = train(tiny, tmp_path, full=True, trainer={"lr_scheduler_type": "constant"})
    assert "settings changed" in capsys.readouterr().err and steps[0] == 8  # keyed: trained again
    assert not same(cosine, constant)  # the scheduler reached the trainer
    assert json.loads((tmp_path / "genret_run.json").read_text())["settings"]["lr_scheduler_type"] == "constant"


@pytest.mark.parametrize("trainer, message", [
    ({"lr_sched": "linear"}, "train.trainer.lr_sched: not an argument of trl's SFTConfig or DPOConfig "
                             "(did you mean 'lr_scheduler_type'?)"),
    ({"learning_rate": 1e-4}, "train.trainer.learning_rate: genret sets it from train.learning_rate"),
    ({"output_dir": "x"}, "train.trainer.output_dir: genret sets it from the fit's out_dir"),
    ({"weight_decay": "heavy"}, "train.trainer.weight_decay: expected a float, got 'heavy'"),
    ({"lr_scheduler_type": "sideways"}, "train.trainer: sideways is not a valid SchedulerType"),
])
def test_trainer_refuses_unknown_genret_owned_and_bad_arguments(trainer, message):
    from genret.training import TrainConfig

    with pytest.raises(ValueError, match=re.escape(message)) as e:
        TrainConfig(trainer=trainer)
    assert "\n" not in str(e.value)


def test_fit_gives_the_caller_back_its_random_state(synthetic):
    """fit seeds what it trains with, but the caller's global RNGs continue where they were."""
    import random

    import numpy as np

    from genret.bm25 import BM25Retriever

    class Seeding(BM25Retriever):
        def _fit(self, dataset, *, out_dir, progress):
            torch.manual_seed(1), np.random.seed(1), random.seed(1)
            torch.rand(5), np.random.rand(5), random.random()
            super()._fit(dataset, out_dir=out_dir, progress=progress)

    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    Seeding().fit(synthetic)
    after = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    assert torch.equal(after[0], torch.rand(3)) and np.array_equal(after[1], np.random.rand(3))
    assert after[2] == random.random()


def test_the_lm_head_scores_only_labelled_positions_and_trains_the_same(tiny, tmp_path, monkeypatch):
    """On CPU trl's fused head would score every position (prompt and padding too); genret
    has it score only the labelled ones, and the trained weights are the same."""
    import contextlib

    import trl.trainer.utils as tu

    import genret.training as gt

    rows = []
    apply = tu._ChunkedLogProbFunction.apply
    monkeypatch.setattr(tu._ChunkedLogProbFunction, "apply", lambda hidden, *a: rows.append(len(hidden))
                        or apply(hidden, *a))
    compact = train(tiny, tmp_path / "compact", full=True, max_steps=2)
    scored, rows[:] = list(rows), []
    monkeypatch.setattr(gt, "_score_labelled_positions_only", contextlib.nullcontext)
    every = train(tiny, tmp_path / "every", full=True, max_steps=2)
    _, _, ex = tiny
    labelled = sum(len(c) + 1 for _, c in ex[:8])  # the first batch's completions and their EOS
    assert scored[0] == labelled and all(s < r for s, r in zip(scored, rows))  # same batches (seeded)
    assert compact.keys() == every.keys()
    assert all(torch.allclose(compact[k], every[k], atol=1e-6) for k in compact)
