"""The CLI contract: `genret eval --json` and `genret compare` outputs."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from genret.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_eval_json(synthetic_dir, capsys):
    assert main(["eval", "--data", str(synthetic_dir), "--threshold", "2.5",
                 "--retriever", "bm25", "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("R@10", "R@100", "R@1000", "MRR@10", "NDCG@10", "n_queries"):
        assert isinstance(out[key], (int, float))
    assert out["n_queries"] > 0 and 0 < out["R@100"] <= 1


def test_eval_table_has_bucket_rows(synthetic_dir, capsys):
    assert main(["eval", "--data", str(synthetic_dir), "--threshold", "2.5",
                 "--retriever", "bm25-stem", "--split", "dev"]) == 0
    out = capsys.readouterr().out
    for row in ("| all |", "| head |", "| torso |", "| tail |"):
        assert row in out


def test_eval_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["eval", "--data", str(tmp_path / "nope"), "--retriever", "bm25"]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "Traceback" not in err


def test_compare_writes_everything(synthetic_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nsplit: test\nk: 100\nretrievers:\n  - name: bm25\n  - name: bm25-stem\n"
                   "fusion:\n  - name: rrf\n    members: [bm25, bm25-stem]\n")
    out = tmp_path / "out"
    assert main(["compare", "--config", str(cfg), "--data", str(synthetic_dir),
                 "--threshold", "2.5", "--out", str(out)]) == 0
    assert "| bm25-stem |" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    names = [e["name"] for e in metrics["retrievers"]]
    assert names == ["bm25", "bm25-stem", "rrf"]
    e = metrics["retrievers"][0]
    for key in ("metrics", "buckets", "latency_ms_p50", "latency_ms_p95", "index_bytes", "fit_seconds"):
        assert key in e
    assert set(e["buckets"]) == {"head", "torso", "tail"}
    for f in ("table.md", "table.csv", "recall_at_k.png", "recall_by_bucket.png", "runs/bm25.trec", "runs/rrf.trec"):
        assert (out / f).stat().st_size > 0
    # `genret report` re-renders the same table from the saved runs, without retrievers
    table = (out / "table.md").read_text()
    (out / "table.md").unlink()
    assert main(["report", str(out), "--data", str(synthetic_dir), "--threshold", "2.5"]) == 0
    assert (out / "table.md").read_text() == table
    # a doctored run is refused, not re-rendered: runs/ must be the runs the comparison wrote
    (out / "runs" / "bm25.trec").write_text("")
    capsys.readouterr()
    assert main(["report", str(out), "--data", str(synthetic_dir), "--threshold", "2.5"]) == 2
    err = capsys.readouterr().err
    assert "bm25.trec has 0 lines" in err and "--resume" in err and len(err.splitlines()) == 1
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert not (tmp_path / "nothing").exists()


def test_compare_resume_reuses_unchanged_rows_only(synthetic_dir, tmp_path, capsys):
    from genret.eval import Run, rrf

    cfg, out = tmp_path / "c.yaml", tmp_path / "out"
    rows = ("name: t\nsplit: test\nk: 100\nretrievers:\n  - name: bm25\n  - name: bm25-stem\n{stem}"
            "  - name: reload\n    model: '{{out}}/models/bm25'\n"
            "fusion:\n  - name: rrf\n    members: [bm25, bm25-stem]\n")
    args = ["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(out)]

    def reused():
        """The rows the last command reused (it says so on stderr), and its stderr."""
        err = capsys.readouterr().err
        return {line.split(":")[0] for line in err.splitlines() if "reusing its saved run" in line}, err

    cfg.write_text(rows.format(stem=""))
    assert main(args) == 0 and reused()[0] == set()
    assert (out / "runs" / "bm25.json").is_file()
    cfg.write_text(rows.format(stem="    params: {k1: 0.9}\n"))
    assert main(args + ["--resume"]) == 0
    done, err = reused()
    assert done == {"bm25", "reload"}  # unchanged: reused
    assert "bm25-stem: re-running it: its config changed" in err  # its params changed: re-run
    # fusion is recomputed from the rows' runs
    fused, bm25, stem = (Run.read_trec(out / "runs" / f"{n}.trec") for n in ("rrf", "bm25", "bm25-stem"))
    assert {q: r.ids for q, r in fused.items()} == {q: r.ids for q, r in rrf([bm25, stem], 100).items()}
    # an upstream row re-run invalidates the rows that load its {out}/models/<row>
    cfg.write_text(rows.format(stem="    params: {k1: 0.9}\n").replace("name: bm25\n", "name: bm25\n    params: {k1: 1.1}\n", 1))
    assert main(args + ["--resume"]) == 0
    done, err = reused()
    assert done == {"bm25-stem"} and "reload: re-running it: its saved model" in err
    # a row saved under other effective settings (a default that changed since) is re-run
    saved = json.loads((out / "runs" / "bm25-stem.json").read_text())
    saved["record"]["settings"]["k1"] = 1.5
    (out / "runs" / "bm25-stem.json").write_text(json.dumps(saved))
    assert main(args + ["--resume"]) == 0
    done, err = reused()
    assert done == {"bm25", "reload"} and "bm25-stem: re-running it: its effective settings changed" in err
    # runs saved without a record (an older genret kept only metrics.json) are re-run, saying so
    for f in (out / "runs").glob("*.json"):
        f.unlink()
    assert main(args + ["--resume"]) == 0
    done, err = reused()
    assert done == set() and err.count("it has no record of what it was run on") == 3
    assert main(args) == 0 and reused()[0] == set()  # without --resume everything re-runs


def test_compare_only_runs_the_named_rows_and_their_fusions(synthetic_dir, tmp_path, capsys):
    cfg, out = tmp_path / "c.yaml", tmp_path / "out"
    cfg.write_text("name: t\nsplit: test\nk: 100\nretrievers:\n  - name: bm25\n  - name: bm25-stem\n"
                   "  - name: other\n    retriever: bm25\n    params: {k1: 0.9}\n"
                   "fusion:\n  - name: rrf\n    members: [bm25, bm25-stem]\n"
                   "  - name: rrf-other\n    members: [bm25, other]\n")
    args = ["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(out)]
    assert main(args + ["--only", "bm25-stem,bm25"]) == 0
    names = [e["name"] for e in json.loads((out / "metrics.json").read_text())["retrievers"]]
    assert names == ["bm25", "bm25-stem", "rrf"]  # config order; rrf-other lacks a member
    assert not (out / "runs" / "other.trec").exists()
    capsys.readouterr()
    assert main(args + ["--resume"]) == 0  # the whole config: the part already run is reused
    err = capsys.readouterr().err
    assert "bm25: reusing" in err and "bm25-stem: reusing" in err and "other: reusing" not in err
    assert len(json.loads((out / "metrics.json").read_text())["retrievers"]) == 5
    assert main(args + ["--only", "bm25,nope"]) == 2
    err = capsys.readouterr().err
    assert "--only: nope is not a retriever row" in err and len(err.splitlines()) == 1


def test_compare_saved_model_rows_take_setting_overrides(synthetic_dir, tmp_path, capsys):
    first = tmp_path / "first"
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nsplit: test\nk: 10\nretrievers:\n  - name: bm25\n")
    assert main(["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(first)]) == 0
    saved = first / "models" / "bm25"
    cfg.write_text(f"name: t\nsplit: test\nk: 10\nretrievers:\n  - name: again\n    model: {saved}\n"
                   "  - name: bad\n    model: " + str(saved) + "\n    params: {k1: 0.1}\n")
    assert main(["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(tmp_path / "o")]) == 2
    assert "['k1'] cannot change after fitting" in capsys.readouterr().err


def test_compare_rejects_unknown_config_keys(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nretreivers: []\n")
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "unknown keys" in capsys.readouterr().err


def test_console_script_runs():
    exe = Path(sys.executable).with_name("genret")
    if not exe.exists():
        pytest.skip("console script not installed (run `make test`, which installs the package)")
    res = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and "compare" in res.stdout


@pytest.mark.parametrize("setting, message", [
    ("train.trainer.lr_sched=linear", "train.trainer.lr_sched: not an argument of trl's SFTConfig or DPOConfig "
                                      "(did you mean 'lr_scheduler_type'?)"),
    ("train.trainer.learning_rate=1", "train.trainer.learning_rate: genret sets it from train.learning_rate"),
])
def test_train_refuses_a_bad_trainer_argument_before_loading_data(tmp_path, capsys, setting, message):
    assert main(["train", "--mode", "multispan", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "m"),
                 "--set", setting, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("mode, flags, message", [
    ("multispan", ["--backbone", "minilm", "--preset", "tiny"], "--backbone and --preset both given"),
    ("dense", ["--preset", "tiny"], "--backbone/--preset apply to the LM channels"),
])
def test_train_refuses_backbone_flags_it_cannot_honour(tmp_path, capsys, mode, flags, message):
    assert main(["train", "--mode", mode, "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "m"),
                 *flags, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1


def test_compare_refuses_a_misspelled_fit_setting_in_one_line(synthetic_dir, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nretrievers:\n  - name: bm25\n  - name: bm25-stem\n    fit: {k_1: 0.9}\n")
    assert main(["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "row 'bm25-stem' fit: unknown setting(s) k_1; valid: b, k1, method" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "runs" / "bm25.trec").exists()  # refused before the first row ran
