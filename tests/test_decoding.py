"""FM-index span constraint against brute force, and the logits processor's masking."""

import numpy as np
import pytest
import torch

from fm_index import FMIndex
from genret.decoding import ConstraintLogitsProcessor, FMIndexSpanConstraint

SEP, EOS = 1, 0


def _brute_allowed(docs, word_start, gen, max_span_tokens, max_spans):
    done, cur = FMIndexSpanConstraint.split(gen, SEP)
    cur = list(cur)
    if not cur:
        return {t for d in docs for t in d if word_start[t]}
    follow, boundary = set(), False
    for d in docs:
        for i in range(len(d) - len(cur) + 1):
            if d[i:i + len(cur)] == cur:
                j = i + len(cur)
                if j == len(d) or word_start[d[j]]:
                    boundary = True
                if j < len(d):
                    follow.add(d[j])
    if len(cur) >= max_span_tokens:
        follow = {t for t in follow if not word_start[t]}
    if boundary and tuple(cur) not in done:
        follow |= {EOS} | ({SEP} if len(done) + 1 < max_spans else set())
    return follow


@pytest.mark.parametrize("seed", range(5))
def test_allowed_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    vocab = 12
    word_start = rng.random(vocab) < 0.5
    word_start[:2] = False
    docs = [rng.integers(2, vocab, size=rng.integers(1, 9)).tolist() for _ in range(15)]
    idx = FMIndex.build(docs, vocab_size=vocab)
    c = FMIndexSpanConstraint(idx, SEP, EOS, word_start, max_span_tokens=3, max_spans=2)
    # random walks through the constraint: every allowed step must match brute force
    for _ in range(40):
        gen = []
        for _ in range(10):
            got = set(c.allowed([gen])[0].tolist())
            assert got == _brute_allowed(docs, word_start, gen, 3, 2), gen
            if not got or EOS in got and rng.random() < 0.3:
                break
            gen.append(int(rng.choice(sorted(got))))
            if gen[-1] == EOS:
                break
        for span in c.spans(gen):
            assert idx.count(np.array(span)) > 0


def test_processor_masks_and_renormalises():
    idx = FMIndex.build([[2, 3, 4], [2, 5]], vocab_size=6)
    c = FMIndexSpanConstraint(idx, SEP, EOS, None, max_span_tokens=4, max_spans=2)
    proc = ConstraintLogitsProcessor(c, prompt_len=2, fallback_id=EOS)
    ids = torch.tensor([[9, 9, 2], [9, 9, 4]])  # prompt of 2 tokens, then one generated token
    logp = torch.log_softmax(torch.randn(2, 6), dim=-1)
    out = proc(ids, logp)
    allowed0 = set(torch.isfinite(out[0]).nonzero().flatten().tolist())
    assert allowed0 == {3, 5, EOS, SEP}  # after [2]: 3 or 5 follow; every token starts a word
    assert torch.logsumexp(out[0], 0).item() == pytest.approx(0.0, abs=1e-5)
    # [4] ends a title: only ending is allowed
    assert set(torch.isfinite(out[1]).nonzero().flatten().tolist()) == {EOS, SEP}
