"""The HF Trainer under the dense and sparse encoders (genret.contrastive): checkpoints in
``out_dir``, an interrupted fit resumed to the weights and log of an uninterrupted one,
other settings starting over, a finished run loaded rather than retrained."""

import pytest
import torch

from genret import dense
from genret.contrastive import gather_cat, warmup_linear
from genret.dense import DenseRetriever
from genret.sparse import SpladeRetriever, training
from genret.training import weights_fingerprint
from tiny import tiny_bert, tiny_sentence_encoder


@pytest.fixture(scope="module")
def encoders(tmp_path_factory, synthetic):
    d = tmp_path_factory.mktemp("contrastive")
    return {"dense": tiny_sentence_encoder(d / "st", synthetic), "splade": tiny_bert(d / "bert", synthetic)}


def _fit(which, path, out_dir, synthetic, **cfg):
    """(retriever, trained module, log without timings) of a 5-step fit checkpointing every 2."""
    if which == "dense":
        r = DenseRetriever(encoder=path, train=True, batch_size=16, max_steps=5, save_steps=2, log_every=1,
                           cache=False, **cfg).fit(synthetic, out_dir=out_dir)
        return r, r.model, r.training["log"]
    r = SpladeRetriever(backbone=path, batch_size=16, max_steps=5, save_steps=2, log_every=1, mlm_warmup_steps=0,
                        max_doc_len=24, max_query_len=12, **cfg).fit(synthetic, out_dir=out_dir)
    return r, r.encoder, [{k: v for k, v in e.items() if k != "seconds"} for e in r.train_log]


class Stop(Exception):
    pass


@pytest.mark.parametrize("which", ["dense", "splade"])  # splade's tiny BERT has dropout: the RNG resumes too
def test_an_interrupted_fit_resumes_to_the_same_model(which, encoders, synthetic, tmp_path, monkeypatch, capsys):
    _, whole, log = _fit(which, encoders[which], tmp_path / "whole", synthetic)
    assert len(log) == 5 and sorted(p.name for p in (tmp_path / "whole").iterdir()) == ["checkpoint-5",
                                                                                        "genret_run.json"]
    klass = dense._DenseTask if which == "dense" else training._SparseTask
    original = klass.step_loss

    def stop_at_4(self, model, step, local):
        if step == 3:
            raise Stop
        return original(self, model, step, local)

    monkeypatch.setattr(klass, "step_loss", stop_at_4)
    with pytest.raises(Stop):
        _fit(which, encoders[which], tmp_path / "work", synthetic)
    monkeypatch.setattr(klass, "step_loss", original)
    assert [p.name for p in (tmp_path / "work").glob("checkpoint-*")] == ["checkpoint-2"]
    capsys.readouterr()
    _, resumed, resumed_log = _fit(which, encoders[which], tmp_path / "work", synthetic)
    assert "resuming" in capsys.readouterr().err
    assert weights_fingerprint(resumed) == weights_fingerprint(whole) and resumed_log == log
    # a finished run is loaded, not trained again
    _, again, again_log = _fit(which, encoders[which], tmp_path / "whole", synthetic)
    assert weights_fingerprint(again) == weights_fingerprint(whole) and again_log == log
    # other settings: the checkpoints are not resumed
    _, other, _ = _fit(which, encoders[which], tmp_path / "work", synthetic, seed=1)
    assert "settings changed" in capsys.readouterr().err
    assert weights_fingerprint(other) != weights_fingerprint(whole)


def test_schedule_and_gather_on_one_process():
    f = warmup_linear(2, 10)  # the former loops' LambdaLR: (s + 1) / warm, then linear decay
    assert [f(s) for s in range(10)] == [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8]
    assert warmup_linear(1, 1)(0) == 1.0
    x = torch.randn(3, 4)
    assert gather_cat(x) is x
