"""The generative-retriever core (genret.generative): stages, init, the fit flow, the
caller's RNG. Training is replaced by a recorder where only the flow is under test."""

import importlib

import pytest
import torch

TINY = {"preset": "tiny", "num_beams": 3, "dpo_queries": 10,
        "train": {"full": True, "max_steps": 2, "batch_size": 16}}


@pytest.fixture
def trained_calls(monkeypatch):
    """(stage, examples or pairs, train config) per sft/dpo call; the model comes back unchanged."""
    import genret.generative as g

    calls = []
    monkeypatch.setattr(g, "sft", lambda model, tok, examples, out, cfg, trainable_tokens=None:
                        calls.append(("sft", examples, cfg)) or model)
    monkeypatch.setattr(g, "dpo", lambda model, tok, pairs, out, cfg: calls.append(("dpo", pairs, cfg)) or model)
    return calls


@pytest.mark.parametrize("module, name", [("genret.lexical", "MultispanRetriever"),
                                          ("genret.semantic", "SemanticIDRetriever")])
def test_stage_must_be_sft_or_dpo(module, name):
    with pytest.raises(ValueError, match="stage must be 'sft' or 'dpo', got 'rl'"):
        getattr(importlib.import_module(module), name)(stage="rl")


def test_dpo_stage_trains_sft_then_dpo_on_mined_pairs(trained_calls, synthetic):
    from genret.lexical import PROMPT, MultispanRetriever

    r = MultispanRetriever(stage="dpo", **TINY).fit(synthetic)
    assert [c[0] for c in trained_calls] == ["sft", "dpo"]
    (_, examples, _), (_, pairs, _) = trained_calls
    assert r.info["stage"] == "dpo" and r.info["sft_examples"] == len(examples) > 0
    assert r.info["dpo_pairs"] == len(pairs) > 0 and r.info["dpo_queries_mined"] == 10
    assert r.info["dpo_chosen_from_beams"] == len(pairs)  # multispan's chosen is always a beam
    prompts = {PROMPT.format(query=synthetic.queries[q]) for q in synthetic.split("train")}
    assert all(p["prompt"] in prompts and p["chosen"] != p["rejected"] for p in pairs)


def test_a_trained_init_is_not_trained_again(trained_calls, synthetic, tmp_path):
    from genret.lexical import MultispanRetriever

    MultispanRetriever(stage="sft", **TINY).fit(synthetic).save(tmp_path / "sft")
    sft_examples = trained_calls[0][1]
    trained_calls.clear()
    r = MultispanRetriever(stage="dpo", init=str(tmp_path / "sft"), **TINY).fit(synthetic)
    assert [c[0] for c in trained_calls] == ["dpo"]  # DPO straight on the init's model
    assert r.info["stage"] == "dpo" and r.info["sft_examples"] == len(sft_examples)
    trained_calls.clear()
    r = MultispanRetriever(stage="sft", init=str(tmp_path / "sft"), **TINY).fit(synthetic)
    assert trained_calls == [] and r.info["stage"] == "sft"  # only indexed


def test_init_of_another_kind_is_refused(trained_calls, synthetic, tmp_path):
    from genret.artifact import ArtifactError
    from genret.lexical import MultispanRetriever
    from genret.semantic import SemanticIDRetriever

    MultispanRetriever(stage="sft", **TINY).fit(synthetic).save(tmp_path / "ms")
    with pytest.raises(ArtifactError, match="gr-multispan"):
        SemanticIDRetriever(stage="dpo", init=str(tmp_path / "ms"), preset="tiny").fit(synthetic)


def test_progress_bars_need_both_fit_progress_and_train_progress(trained_calls, synthetic):
    from genret.lexical import MultispanRetriever

    for progress, train_progress, shown in ((False, True, False), (True, True, True), (True, False, False)):
        r = MultispanRetriever(stage="sft", **{**TINY, "train": {**TINY["train"], "progress": train_progress}})
        r.fit(synthetic, progress=progress)
        assert trained_calls[-1][2].progress is shown
        assert r.cfg.train.progress is train_progress  # the saved config keeps the user's setting


def test_unknown_settings_are_refused_before_any_training(trained_calls, synthetic):
    from genret.lexical import MultispanRetriever

    r = MultispanRetriever(**TINY)
    with pytest.raises(ValueError, match="unknown setting.*num_beam; valid: .*num_beams"):
        r.fit(synthetic, num_beam=4)
    with pytest.raises(ValueError, match=r"train: unknown setting.*max_step\b"):
        r.fit(synthetic, train={"max_step": 3})
    assert trained_calls == []
    r.fit(synthetic, num_beams=2, train={"max_steps": 1})
    assert r.cfg.num_beams == 2 and trained_calls[0][2].max_steps == 1


def test_use_before_fit_is_refused(tmp_path):
    from genret.lexical import MultispanRetriever

    r = MultispanRetriever()
    with pytest.raises(RuntimeError, match="before fit"):
        r.search({"q": "drill"})
    with pytest.raises(RuntimeError, match="before fit"):
        r.save(tmp_path / "m")


def test_same_seed_same_model_and_the_callers_rng_is_left_alone(synthetic):
    """Two real fits with one seed train the same weights; neither reseeds the caller's
    torch RNG (fit runs under a forked RNG)."""
    from genret.lexical import MultispanRetriever
    from genret.training import weights_fingerprint

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    cfg = {**TINY, "train": {**TINY["train"], "progress": False}}
    a, b = (MultispanRetriever(stage="sft", **cfg).fit(synthetic) for _ in range(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert weights_fingerprint(a.model) == weights_fingerprint(b.model)


def test_preference_pair_corrects_ranking_mistakes():
    from genret.generative import preference_pair

    hyps = ["a", "b", "c", "d"]  # best first
    assert preference_pair(hyps, [False, False, True, True]) == ("c", "a")
    assert preference_pair(hyps, [True, False, True, False]) is None   # already right
    assert preference_pair(hyps, [False] * 4) is None                  # nothing to prefer
