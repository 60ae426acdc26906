"""Reliability of the comparison harness: no stale reuse under --resume, checked run
files, unique row names, one writer per results dir, never a user's folder."""

import dataclasses
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from genret import harness
from genret.cli import main
from genret.eval import Run
from genret.harness import CompareConfig, FusionConfig, RowConfig, compare, report


def _cfg(*names, **kw):
    return CompareConfig(name="t", k=50, retrievers=[RowConfig(n) for n in names], **kw)


@pytest.fixture
def fitted(monkeypatch):
    """The names of the rows fitted so far (a list; a reused row is not fitted)."""
    rows = []
    run_row = harness.run_row
    monkeypatch.setattr(harness, "run_row", lambda row, *a: rows.append(row.name) or run_row(row, *a))
    return rows


def test_resume_reuses_only_for_the_same_dataset_and_threshold(synthetic, tmp_path, fitted, capsys):
    out, cfg = tmp_path / "out", _cfg("bm25", "bm25-stem")
    compare(cfg, synthetic, out)
    compare(cfg, synthetic, out, resume=True)
    assert fitted == ["bm25", "bm25-stem"]  # unchanged: both reused
    p = next(iter(synthetic.catalog))
    edited = dataclasses.replace(synthetic, catalog={**synthetic.catalog, p: synthetic.catalog[p] + " deluxe"})
    fitted.clear()
    compare(cfg, edited, out, resume=True)
    assert fitted == ["bm25", "bm25-stem"]
    assert "bm25: re-running it: the dataset changed" in capsys.readouterr().err
    fitted.clear()
    compare(cfg, dataclasses.replace(edited, threshold=3.0), out, resume=True)
    assert fitted == ["bm25", "bm25-stem"]
    assert "the relevance threshold changed (2.5 -> 3.0)" in capsys.readouterr().err
    saved = json.loads((out / "runs" / "bm25.json").read_text())["record"]
    assert saved["threshold"] == 3.0 and saved["format"] == harness.RECORD_FORMAT


def test_resume_reruns_a_row_whose_saved_model_changed(synthetic, tmp_path, fitted, capsys):
    first, out = tmp_path / "first", tmp_path / "out"
    compare(_cfg("bm25"), synthetic, first)
    cfg = CompareConfig(name="t", k=50, retrievers=[RowConfig("again", model=str(first / "models" / "bm25"))])
    compare(cfg, synthetic, out)
    compare(cfg, synthetic, out, resume=True)
    assert fitted == ["bm25", "again"]
    compare(CompareConfig(name="t", k=50, retrievers=[RowConfig("bm25", params={"k1": 0.7})]), synthetic, first)
    compare(cfg, synthetic, out, resume=True)
    assert fitted == ["bm25", "again", "bm25", "again"]
    assert "again: re-running it: its saved model" in capsys.readouterr().err


@pytest.mark.parametrize("upstream", ["bm25", "bm25-stem", "bm25-é"])
def test_resume_reruns_exactly_the_rows_that_load_a_rerun_row(synthetic, tmp_path, fitted, upstream):
    """A row loading ``{out}/models/<row>`` re-runs with that row and no other, for names
    that are prefixes of each other and names outside ASCII (JSON would escape them)."""
    names = ("bm25", "bm25-stem", "bm25-é")

    def cfg(changed=None):
        rows = [RowConfig(n, retriever=n[:4] if n.endswith("é") else None,
                          params={"k1": 0.8} if n == changed else {}) for n in names]
        return CompareConfig(name="t", k=50, retrievers=rows + [RowConfig(f"reload-{i}", model=f"{{out}}/models/{n}")
                                                                 for i, n in enumerate(names)])

    out = tmp_path / "out"
    compare(cfg(), synthetic, out)
    fitted.clear()
    compare(cfg(upstream), synthetic, out, resume=True)
    assert fitted == [upstream, f"reload-{names.index(upstream)}"]


def test_a_rows_inputs_are_the_models_its_settings_name_exactly(synthetic, tmp_path):
    """``{out}/models/<row>`` in params (e.g. a DPO row's ``init``) is read as written: a
    name outside ASCII is that row's model, not a JSON escape of it that names nothing."""
    from genret.bm25 import BM25Retriever

    for name in ("bm25", "bm25-stem", "bm25-é"):
        BM25Retriever().fit(synthetic).save(tmp_path / "models" / name)
    row = RowConfig("dpo", params={"init": "{out}/models/bm25-é", "paths": ["{out}/models/bm25-stem/x"]})
    inputs = harness._inputs(row, tmp_path)
    assert sorted(inputs) == ["{out}/models/bm25-stem", "{out}/models/bm25-é"]
    assert all(inputs.values())  # each one's manifest checksum: the model exists


def test_a_bad_fit_block_fails_before_any_row_runs(synthetic, tmp_path, fitted):
    rows = [RowConfig("bm25"), RowConfig("bm25-stem", fit={"k2": 1.0, "progress": False})]
    with pytest.raises(ValueError, match=r"row 'bm25-stem' fit: unknown setting\(s\) k2; valid: b, k1, method"):
        compare(CompareConfig(name="t", k=50, retrievers=rows), synthetic, tmp_path / "out")
    rows = [RowConfig("bm25"), RowConfig("again", model=str(tmp_path / "m"), fit={"k1": 1.0})]
    with pytest.raises(ValueError, match="row 'again': a fit: block applies to a fitted row, not to a saved model"):
        compare(CompareConfig(name="t", k=50, retrievers=rows), synthetic, tmp_path / "out")
    assert fitted == []
    compare(CompareConfig(name="t", k=50, retrievers=[RowConfig("bm25", fit={"k1": 0.9, "progress": False})]),
            synthetic, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "models" / "bm25" / "manifest.json").read_text())["config"]["k1"] == 0.9


@pytest.mark.parametrize("damage", ["truncate", "edit", "drop_record_run"])
def test_resume_reruns_a_damaged_run_file(synthetic, tmp_path, fitted, capsys, damage):
    out, cfg = tmp_path / "out", _cfg("bm25")
    compare(cfg, synthetic, out)
    trec = out / "runs" / "bm25.trec"
    good = trec.read_text()
    if damage == "truncate":
        trec.write_text(good[: len(good) // 2])
    elif damage == "edit":
        trec.write_text(good.replace("Q0", "Q0 ", 1))  # same lines, other bytes
    else:
        rec = out / "runs" / "bm25.json"
        rec.write_text(json.dumps({k: v for k, v in json.loads(rec.read_text()).items() if k != "run"}))
    compare(cfg, synthetic, out, resume=True)
    assert fitted == ["bm25", "bm25"]
    err = capsys.readouterr().err
    assert f"bm25: re-running it: {trec}" in err and "reusing" not in err
    assert trec.read_text() == good


def test_duplicate_and_unsafe_row_names_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="two rows are named 'bm25'"):
        _cfg("bm25", "bm25")
    with pytest.raises(ValueError, match="two rows are named 'bm25'"):
        _cfg("bm25", "bm25-stem", fusion=[FusionConfig("bm25", ["bm25", "bm25-stem"])])
    with pytest.raises(ValueError, match="two rows are named 'rrf'"):
        _cfg("bm25", fusion=[FusionConfig("rrf", ["bm25"]), FusionConfig("rrf", ["bm25"])])
    with pytest.raises(ValueError, match="names rows \\['dense'\\] that the config does not run"):
        _cfg("bm25", fusion=[FusionConfig("rrf", ["bm25", "dense"])])
    for bad in ("../x", ".hidden", "two words", ""):
        with pytest.raises(ValueError, match="use a file name without"):
            _cfg(bad)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nretrievers:\n  - name: bm25\n  - name: bm25\n")
    assert main(["compare", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "two rows are named 'bm25'" in err
    assert not (tmp_path / "o").exists()


def test_one_writer_per_results_dir(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "out"
    compare(_cfg("bm25"), synthetic, out)
    started, release, errors = threading.Event(), threading.Event(), []
    run_row = harness.run_row

    def slow(row, *a):
        started.set()
        assert release.wait(60)
        return run_row(row, *a)

    monkeypatch.setattr(harness, "run_row", slow)

    def first():
        try:
            compare(_cfg("bm25", "bm25-stem"), synthetic, out)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert started.wait(60)
        busy = re.escape(f"{out} is being written by another genret compare (pid ")
        with pytest.raises(ValueError, match=f"^{busy}\\d+\\); wait for it or choose another --out$"):
            compare(_cfg("bm25-stem"), synthetic, out)
        for fail_fast in (lambda: report(out, synthetic), lambda: harness.claim_results_dir(out)):
            with pytest.raises(ValueError, match="being written by another genret compare"):
                fail_fast()
    finally:
        release.set()
        t.join(120)
    assert not errors
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["name"] for e in metrics["retrievers"]] == ["bm25", "bm25-stem"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "bm25-stem.json", "bm25-stem.trec", "bm25.json", "bm25.trec"]
    assert sorted(p.name for p in (out / "models").iterdir()) == ["bm25", "bm25-stem"]
    report(out, synthetic)  # consistent: every run is the one metrics.json records
    compare(_cfg("bm25"), synthetic, out)  # the lock is released with the compare


def test_a_killed_writer_leaves_no_stale_lock(synthetic, tmp_path):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from genret import harness\n"
         "with harness._results_dir(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"another genret compare \\(pid {holder.pid}\\)"):
            compare(_cfg("bm25"), synthetic, out)
    finally:
        holder.kill()  # SIGKILL: the OS drops its lock
        holder.wait(30)
    compare(_cfg("bm25"), synthetic, out)
    assert (out / "runs" / "bm25.trec").is_file()


def test_a_users_folder_is_never_a_results_dir(synthetic, synthetic_dir, tmp_path, capsys):
    user = tmp_path / "mine"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("keep me")
    (user / "metrics.json").write_text('{"accuracy": 0.9}')  # someone else's metrics.json
    for refused in (lambda: harness.claim_results_dir(user), lambda: compare(_cfg("bm25"), synthetic, user)):
        with pytest.raises(ValueError, match="is a non-empty folder that is not a genret comparison"):
            refused()
    assert sorted(p.name for p in user.iterdir()) == ["metrics.json", "notes.txt", "sub"]
    assert (user / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        compare(_cfg("bm25"), synthetic, tmp_path / "file")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nk: 10\nretrievers:\n  - name: bm25\n")
    assert main(["compare", "--config", str(cfg), "--data", str(synthetic_dir), "--out", str(user)]) == 2
    assert "not a genret comparison" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    compare(_cfg("bm25"), synthetic, tmp_path / "empty")  # an empty folder is fine
    assert (tmp_path / "empty" / harness.MARKER).is_file()
    claimed = tmp_path / "claimed"  # a caller's own files in a claimed results dir stay
    harness.claim_results_dir(claimed)
    (claimed / "synth").mkdir()
    (claimed / "synth" / "pairs.tsv").write_text("q\tp\n")
    compare(_cfg("bm25"), synthetic, claimed)
    assert (claimed / "synth" / "pairs.tsv").read_text() == "q\tp\n"


def test_results_from_before_the_marker_are_still_ours(synthetic, tmp_path, fitted):
    out = tmp_path / "out"
    compare(_cfg("bm25"), synthetic, out)
    (out / harness.MARKER).unlink()
    (out / harness.LOCK).unlink()
    compare(_cfg("bm25"), synthetic, out, resume=True)  # its metrics.json and runs/*.json are ours
    assert fitted == ["bm25"] and (out / harness.MARKER).is_file()


def test_a_failed_write_keeps_the_old_results_whole(synthetic, tmp_path, monkeypatch):
    out = tmp_path / "out"
    compare(_cfg("bm25"), synthetic, out)
    before = (out / "metrics.json").read_text()
    real = harness.os.replace

    def killed(src, dst):
        if str(dst).endswith("metrics.json"):
            raise KeyboardInterrupt  # as if the process died between writing and renaming
        real(src, dst)

    monkeypatch.setattr(harness.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        compare(_cfg("bm25", "bm25-stem"), synthetic, out)
    assert (out / "metrics.json").read_text() == before
    assert not list(out.glob(".*.tmp")) and not list((out / "runs").glob("*.tmp"))


def test_report_refuses_another_dataset_and_edited_runs(synthetic, tmp_path):
    out = tmp_path / "out"
    compare(_cfg("bm25", fusion=[FusionConfig("rrf", ["bm25"])]), synthetic, out)
    with pytest.raises(ValueError, match="not the one the comparison ran on"):
        report(out, dataclasses.replace(synthetic, threshold=3.0))
    trec = out / "runs" / "rrf.trec"
    lines = trec.read_text().splitlines(keepends=True)
    trec.write_text("".join(lines[:-1]))
    with pytest.raises(ValueError, match=f"{trec} has {len(lines) - 1} lines, its record says {len(lines)}"):
        report(out, synthetic)


def test_read_trec_errors_name_file_and_line(tmp_path):
    good = "q1 Q0 p1 1 2.5 t\nq1 Q0 p2 2 1.5 t\n"
    f = tmp_path / "r.trec"
    for bad, why in [("q1 Q0 p3 x 1.0 t\n", "line 3 is not 'qid Q0 docid rank score tag'"),
                     ("q1 Q0 p3 3 high t\n", "line 3 is not"),
                     ("q1 Q0 p3 3\n", "line 3 is not"),
                     ("q1 Q0 p1 3 1.0 t\n", "line 3 lists product 'p1' a second time for query 'q1'")]:
        f.write_text(good + bad)
        with pytest.raises(ValueError, match=why) as e:
            Run.read_trec(f)
        assert str(e.value).startswith(f"{f}: ") and "\n" not in str(e.value)
    f.write_bytes(good.encode() + b"\xff\xfe\n")
    with pytest.raises(ValueError, match="not UTF-8 text"):
        Run.read_trec(f)
    f.write_text(good + "\n  \n")
    assert Run.read_trec(f)["q1"].ids == ["p1", "p2"]  # blank lines are skipped


def test_write_trec_refuses_ids_the_format_cannot_hold(tmp_path):
    f = tmp_path / "r.trec"
    ok = Run()
    ok.add("q1", ["p1"], [1.0])
    ok.write_trec(f)
    bad = Run()
    bad.add("q1", ["p 1"], [1.0])
    with pytest.raises(ValueError, match="'p 1' is empty or holds whitespace"):
        bad.write_trec(f)
    assert Run.read_trec(f)["q1"].ids == ["p1"]  # the old file is intact, no temp file left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.trec"]


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("experiments/*.yaml")), ids=lambda p: p.name)
def test_every_experiment_config_is_valid(path, tmp_path):
    """The committed configs parse and every fitted row's params and fit: settings are
    accepted (a typo in a long run's config would otherwise surface hours into it)."""
    from genret.harness import check_row

    cfg = CompareConfig.from_yaml(path)
    seen = {}
    for row in cfg.retrievers:
        fresh = check_row(row, tmp_path)
        # two rows with the same effective settings are a copy-paste slip, hours of CPU spent twice
        what = repr([row.model, row.params, row.extra_pairs] if fresh is None else
                    [fresh.kind, fresh.cfg, getattr(fresh, "init", None), row.extra_pairs])
        assert what not in seen, f"{path.name}: rows {seen.get(what)!r} and {row.name!r} have the same settings"
        seen[what] = row.name
