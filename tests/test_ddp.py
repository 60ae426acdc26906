"""Every trainer trains ONE model under torchrun: 2 CPU processes over gloo end with identical
weights, and their loss curve is the one of a single process with the same global batch.

``torchrun`` is the launcher here (``accelerate launch --multi_gpu --num_processes 2`` runs it
too, also on a CPU); ``accelerate launch --cpu --num_processes 2`` starts ONE process (``--cpu``
picks accelerate's simple launcher), which the WORLD_SIZE each child records would show. Run
as a script, this file is the child torchrun starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genret.retriever import load_retriever
from tiny import tiny_qwen, tiny_sentence_encoder

GLOBAL_BATCH, STEPS = 16, 4
# float32 summation order (per-process padding, gradient all-reduce) is all that differs
# between the runs: measured relative differences are <= 2e-7 (sparse: 0). 1e-5 leaves room
# for other CPUs; a step on other examples, negatives or masks, or a loss scaled by the
# number of processes, is off by far more
TOLERANCE = 1e-5


def _train(name: str, ds, backbones: dict, batch: int, out: Path) -> dict:
    """Fit trainer ``name`` for STEPS steps of ``batch`` examples per process; its weights'
    fingerprint and per-step losses."""
    from genret.training import weights_fingerprint

    if name == "dense":
        from genret.dense import DenseRetriever

        r = DenseRetriever(encoder=backbones["encoder"], train=True, batch_size=batch, max_steps=STEPS,
                           log_every=1, cache=False, core_term_negatives=1, core_query_weight=0.5)
        r.fit(ds, out_dir=out)
        return {"hash": weights_fingerprint(r.model), "loss": [e["loss"] for e in r.training["log"]]}
    if name == "sparse":
        from genret.sparse import ProsperRetriever

        r = ProsperRetriever(backbone=backbones["causal"], batch_size=batch, max_steps=STEPS, log_every=1,
                             hard_negatives=1, k_q=16, k_d=32, max_doc_len=24, max_query_len=12, lr=1e-3,
                             head_lr=3e-3).fit(ds, out_dir=out)
        return {"hash": weights_fingerprint(r.encoder), "loss": [e["loss"] for e in r.train_log]}
    from genret.retriever import make_retriever

    r = make_retriever("gr-multispan-sft", backbone=backbones["causal"],
                       train={"full": True, "max_steps": STEPS, "batch_size": batch, "progress": False,
                              "trainer": {"logging_steps": 1}}).fit(ds, out_dir=out)
    state = json.loads(next(out.glob("sft/checkpoint-*/trainer_state.json")).read_text())
    return {"hash": weights_fingerprint(r.model), "loss": [e["loss"] for e in state["log_history"] if "loss" in e]}


TRAINERS = ("dense", "sparse", "multispan-sft")


def _child(out: Path, backbones: dict, data: str) -> None:
    from genret.cli import main
    from genret.data import synthetic_dataset

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    ds = synthetic_dataset()
    for name in TRAINERS:
        res = _train(name, ds, backbones, GLOBAL_BATCH // world, out / name)
        (out / f"{name}.rank{rank}.json").write_text(json.dumps({"rank": rank, "world": world, **res}))
    # the CLI: every process trains, the main one saves
    assert main(["train", "--mode", "dense", "--data", data, "--threshold", "2.5", "--out", str(out / "cli"),
                 "--set", f"encoder={backbones['encoder']}", "--set", "max_steps=2", "--set", "batch_size=8",
                 "--set", "cache=false"]) == 0


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, synthetic):
    d = tmp_path_factory.mktemp("ddp-backbones")
    return {"causal": tiny_qwen(d / "qwen", synthetic), "encoder": tiny_sentence_encoder(d / "st", synthetic)}


def test_every_trainer_trains_one_model_under_torchrun(backbones, synthetic, synthetic_dir, tmp_path):
    out = tmp_path / "two"
    out.mkdir()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(Path(__file__).resolve()), str(out), json.dumps(backbones), str(synthetic_dir)]
    with open(tmp_path / "child.log", "w") as log:  # a file: a full pipe would stall the children
        child = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:  # the one-process references meanwhile, here
            one = {name: _train(name, synthetic, backbones, GLOBAL_BATCH, tmp_path / "one" / name)
                   for name in TRAINERS}
            child.wait(timeout=600)
        finally:
            child.kill()
    assert child.returncode == 0, (tmp_path / "child.log").read_text()[-3000:]
    for name in TRAINERS:
        ranks = [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in (0, 1)]
        assert [(x["rank"], x["world"]) for x in ranks] == [(0, 2), (1, 2)]
        assert ranks[0]["hash"] == ranks[1]["hash"], f"{name}: the two processes' weights differ"
        assert len(one[name]["loss"]) == STEPS, name
        assert ranks[0]["loss"] == pytest.approx(one[name]["loss"], rel=TOLERANCE, abs=TOLERANCE), name
    saved = load_retriever(out / "cli")
    assert saved.training["processes"] == 2 and saved.training["steps"] == 2


if __name__ == "__main__":
    _child(Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3])
