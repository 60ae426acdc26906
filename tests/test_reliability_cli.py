"""The command line refuses what it cannot do right, in one line: a model fitted on another
catalog or of another kind than --retriever says, bad --set / --k / --threshold values,
undecodable or binary data; SIGINT exits 130 with one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_tsv_dataset
from genret import cli
from genret.cli import main
from genret.retriever import check_settings, make_retriever
from genret.training import TrainConfig


def one_line_error(capsys, start: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(start) and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def bm25_model(tmp_path_factory, synthetic):
    path = tmp_path_factory.mktemp("models") / "bm25"
    make_retriever("bm25").fit(synthetic).save(path)
    return path


@pytest.fixture
def other_catalog(tmp_path, synthetic):
    """The synthetic data with one title changed."""
    d = write_tsv_dataset(synthetic, tmp_path / "other")
    lines = (d / "products.tsv").read_text().splitlines(keepends=True)
    lines[1] = lines[1].split("\t")[0] + "\tAnother Title\n"
    (d / "products.tsv").write_text("".join(lines))
    return d


def test_eval_model_on_its_catalog_is_labelled_as_the_model(bm25_model, synthetic_dir, capsys):
    data = ["--data", str(synthetic_dir), "--threshold", "2.5", "--split", "test"]
    assert main(["eval", "--model", str(bm25_model), *data, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["retriever"] == "bm25" and out["model"] == str(bm25_model) and out["R@100"] > 0
    assert main(["eval", "--model", str(bm25_model), *data]) == 0
    assert capsys.readouterr().out.startswith(f"bm25 ({bm25_model}) on synthetic test")


def test_eval_and_search_refuse_a_model_fitted_on_another_catalog(bm25_model, other_catalog, capsys):
    assert main(["eval", "--model", str(bm25_model), "--data", str(other_catalog), "--json"]) == 2
    err = one_line_error(capsys, "genret eval: error: ")
    assert f"the model at {bm25_model} was fitted on another catalog" in err and "retrain" in err
    capsys.readouterr()
    assert main(["search", "--model", str(bm25_model), "--data", str(other_catalog), "drill"]) == 2
    one_line_error(capsys, "genret search: error: the model at")
    assert main(["search", "--model", str(bm25_model), "drill", "--k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["products"]) == 3


def test_eval_retriever_must_agree_with_the_model(bm25_model, synthetic_dir, capsys):
    data = ["--data", str(synthetic_dir), "--threshold", "2.5"]
    assert main(["eval", "--retriever", "prosper", "--model", str(bm25_model), *data]) == 2
    err = one_line_error(capsys, "genret eval: error: ")
    assert "holds a 'bm25' retriever, not 'prosper'" in err and "bm25-stem" in err
    assert main(["eval", "--retriever", "bm25-stem", "--model", str(bm25_model), *data]) == 2
    err = one_line_error(capsys, "genret eval: error: ")
    assert "no 'bm25-stem' retriever (bm25-stem has stemmer 'english', not None)" in err
    assert "use one it is: bm25" in err
    assert main(["eval", "--retriever", "bm25", "--model", str(bm25_model), *data, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["retriever"] == "bm25"
    assert main(["eval", *data]) == 2
    one_line_error(capsys, "genret eval: error: give --retriever NAME")


@pytest.mark.parametrize("setting, message", [
    ("nosuchkey=1", "unknown setting 'nosuchkey' for gr-multispan-sft; known: backbone, "),
    ("train.learning_rate=abc", "train.learning_rate: expected a float, got 'abc'"),
    ("train.learnin_rate=1", "unknown setting 'train.learnin_rate' for gr-multispan-sft "
                             "(did you mean 'train.learning_rate'?)"),
    ("train.full=maybe", "train.full: expected a boolean (true or false), got 'maybe'"),
    ("num_beams=2.5", "num_beams: expected an integer, got 2.5"),
    ("train=3", "train: expected settings as train.NAME=VALUE, got 3"),
    ("num_beams", "--set 'num_beams': expected key=value"),
])
def test_train_set_values_are_checked_before_any_work(tmp_path, capsys, setting, message):
    out = tmp_path / "out"
    assert main(["train", "--mode", "multispan", "--data", str(tmp_path / "absent"),
                 "--set", setting, "--out", str(out)]) == 2
    assert message in one_line_error(capsys, "genret train: error: ")
    assert not out.exists()


def test_settings_are_checked_for_python_users_too():
    with pytest.raises(ValueError, match=r"^k1: expected a float, got 'abc'$"):
        make_retriever("bm25", k1="abc")
    with pytest.raises(ValueError, match=r"^unknown setting 'train.epochs' for dense; known: "):
        make_retriever("dense", train={"epochs": 2})  # dense's `train` is a switch, not settings
    with pytest.raises(ValueError, match=r"max_steps: expected an integer or null, got 'x'"):
        make_retriever("prosper", max_steps="x")
    with pytest.raises(ValueError, match=r"lora_targets: expected a list of strings or null, got \['q', 1\]"):
        make_retriever("gr-sid", train={"lora_targets": ["q", 1]})
    with pytest.raises(ValueError, match="lr: expected a finite float, got nan"):
        make_retriever("dense", lr=float("nan"))
    # numbers YAML leaves as strings ("1e-3") are parsed; valid values pass unchanged
    r = make_retriever("gr-multispan-dpo", num_beams="5", train={"learning_rate": "1e-3", "epochs": 2})
    assert (r.cfg.num_beams, r.cfg.train.learning_rate, r.cfg.train.epochs, r.stage) == (5, 1e-3, 2, "dpo")
    assert make_retriever("prosper", negative_sources=["bm25"], max_steps=None).cfg.negative_sources == ("bm25",)
    assert type(make_retriever("bm25", k1=np.float32(1.5)).cfg.k1) is float  # numpy numbers: plain ones
    assert check_settings(TrainConfig, {"seed": 3}, "x") == {"seed": 3}


@pytest.mark.parametrize("argv, message", [
    (["eval", "--retriever", "bm25", "--k", "0"], "argument --k: must be >= 1, got 0"),
    (["eval", "--retriever", "bm25", "--k", "-5"], "argument --k: must be >= 1, got -5"),
    (["eval", "--retriever", "bm25", "--k", "ten"], "argument --k: expected a whole number >= 1, got 'ten'"),
    (["eval", "--retriever", "bm25", "--threshold", "nan"], "argument --threshold: must be a finite number"),
    (["compare", "--config", "c.yaml", "--out", "o", "--threshold", "inf"], "must be a finite number"),
    (["search", "--model", "m", "q", "--k", "0"], "argument --k: must be >= 1"),
])
def test_bad_numbers_are_one_line_usage_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in one_line_error(capsys, f"genret {argv[0]}: error: ")


def test_data_errors_on_the_command_line(tmp_path, synthetic_dir, capsys):
    noise = tmp_path / "noise.bin"
    noise.write_bytes(bytes(range(256)) * 16)
    assert main(["eval", "--retriever", "bm25", "--data", str(noise)]) == 2
    assert "holds binary data" in one_line_error(capsys, f"genret eval: error: {noise}")
    latin = tmp_path / "train.csv"
    latin.write_bytes("id,product_uid,product_title,search_term,relevance\n2,1,Caf\xe9,cafe,3\n"
                      .encode("latin-1"))
    assert main(["eval", "--retriever", "bm25", "--data", str(latin), "--encoding", "utf-8"]) == 2
    assert "line 2 is not valid utf-8" in one_line_error(capsys, f"genret eval: error: {latin}")
    assert main(["eval", "--retriever", "bm25", "--data", str(synthetic_dir), "--encoding", "nope"]) == 2
    one_line_error(capsys, "genret eval: error: unknown text encoding 'nope'")


def test_sigint_exits_130_with_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_eval", interrupted)
    assert main(["eval", "--retriever", "bm25"]) == 130
    assert capsys.readouterr().err == "genret eval: interrupted\n"


@pytest.mark.parametrize("argv", [["train", "--mode", "dense"], ["pretrain", "--preset", "tiny"],
                                  ["sid", "build"]])
def test_out_is_checked_before_loading_data(tmp_path, capsys, argv):
    """A user's folder or another kind's artifact at --out is refused at once (here the data
    does not even exist), and nothing in it is touched; --overwrite lets an artifact go."""
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    (user / "notes.txt").write_text("mine")
    data = ["--data", str(tmp_path / "absent")]
    assert main([*argv, *data, "--out", str(user)]) == 2
    assert "is a non-empty folder that is not a genret" in one_line_error(capsys, f"genret {argv[0]}: error: ")
    assert (user / "notes.txt").read_text() == "mine" and (user / "sub").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"kind": "synth", "format_version": 1}))
    assert main([*argv, *data, "--out", str(other)]) == 2
    assert "holds a genret synth artifact" in one_line_error(capsys, f"genret {argv[0]}: error: ")
    assert main([*argv, *data, "--out", str(other), "--overwrite"]) == 2
    assert "no such file or directory" in one_line_error(capsys, f"genret {argv[0]}: error: ")
    assert (other / "manifest.json").is_file()


def test_overwrite_replaces_an_artifact_of_another_kind(tmp_path, capsys):
    from genret.artifact import artifact_kind
    from genret.data import synthetic_dataset

    data = write_tsv_dataset(synthetic_dataset(n_products=60, n_queries=40), tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"kind": "synth", "format_version": 1}))
    argv = ["pretrain", "--data", str(data), "--preset", "tiny", "--quiet", "--out", str(out)]
    assert main(argv) == 2 and artifact_kind(out) == "synth"
    assert main(argv + ["--overwrite"]) == 0 and artifact_kind(out) == "backbone"
