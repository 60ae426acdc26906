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
    for f in ("table.md", "table.csv", "recall_at_k.png", "runs/bm25.trec", "runs/rrf.trec"):
        assert (out / f).stat().st_size > 0
    # `genret report` re-renders the same table from the saved runs, without retrievers
    table = (out / "table.md").read_text()
    (out / "table.md").unlink()
    assert main(["report", str(out), "--data", str(synthetic_dir), "--threshold", "2.5"]) == 0
    assert (out / "table.md").read_text() == table
    # a doctored run changes the re-rendered numbers: they come from runs/, not metrics.json
    (out / "runs" / "bm25.trec").write_text("")
    assert main(["report", str(out), "--data", str(synthetic_dir), "--threshold", "2.5"]) == 0
    again = json.loads((out / "metrics.json").read_text())["retrievers"][0]
    assert again["metrics"]["R@100"] == 0.0 and metrics["retrievers"][0]["metrics"]["R@100"] > 0
    assert main(["report", str(tmp_path / "nothing")]) == 2


def test_compare_resume_reuses_unchanged_rows_only(synthetic_dir, tmp_path, capsys):
    cfg, out = tmp_path / "c.yaml", tmp_path / "out"
    rows = ("name: t\nsplit: test\nk: 100\nretrievers:\n  - name: bm25\n  - name: bm25-stem\n{stem}"
            "  - name: reload\n    model: '{{out}}/models/bm25'\n"
            "fusion:\n  - name: rrf\n    members: [bm25, bm25-stem]\n")
    args = ["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(out)]

    def recall():
        return {e["name"]: e["metrics"]["MRR@10"]
                for e in json.loads((out / "metrics.json").read_text())["retrievers"]}

    cfg.write_text(rows.format(stem=""))
    assert main(args) == 0
    assert recall()["bm25"] > 0 and (out / "runs" / "bm25.json").is_file()
    # a doctored saved run shows whether a row was reused or re-run
    for name in ("bm25", "bm25-stem", "reload"):
        (out / "runs" / f"{name}.trec").write_text("")
    cfg.write_text(rows.format(stem="    params: {k1: 0.9}\n"))
    assert main(args + ["--resume"]) == 0
    again = recall()
    assert again["bm25"] == 0 and again["reload"] == 0  # unchanged: reused
    assert again["bm25-stem"] > 0  # its params changed: re-run
    # fusion is recomputed from the rows' runs: with bm25's run empty it is bm25-stem's order
    from genret.eval import Run

    fused, stem = (Run.read_trec(out / "runs" / f"{n}.trec") for n in ("rrf", "bm25-stem"))
    assert {q: r.ids for q, r in fused.items()} == {q: r.ids[:100] for q, r in stem.items()}
    # an upstream row re-run invalidates the rows that load its {out}/models/<row>
    cfg.write_text(rows.format(stem="    params: {k1: 0.9}\n").replace("name: bm25\n", "name: bm25\n    params: {k1: 1.1}\n", 1))
    assert main(args + ["--resume"]) == 0
    assert recall()["reload"] > 0
    # runs saved before per-row records existed: metrics.json stands in for them
    for f in (out / "runs").glob("*.json"):
        f.unlink()
    (out / "runs" / "bm25.trec").write_text("")
    assert main(args + ["--resume"]) == 0
    assert recall()["bm25"] == 0
    assert main(args) == 0 and recall()["bm25"] > 0  # without --resume everything re-runs


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
