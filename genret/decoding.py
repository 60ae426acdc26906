"""Constrained beam search: a ``LogitsProcessor`` that asks a constraint, batched over
all beams at every step, which tokens may come next.

HF beam search applies processors to log-probabilities; by default the processor
renormalises them over the allowed tokens, so a beam's score is the log-probability of
its sequence *under the constraint* (with ``length_penalty=0`` the plain sum).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList


class Constraint:
    """Which tokens may follow each beam's generated tokens (prompt excluded)."""

    def allowed(self, generated: list[list[int]]) -> list[np.ndarray]:
        raise NotImplementedError


class FMIndexSpanConstraint(Constraint):
    """Every span must occur in the catalog; ``sep_id`` ends a span and starts the next.

    - A span starts at a word start (``word_start[token]``) and may only end where some
      occurrence of it is followed by a word start or the end of a title.
    - A span grows to ``max_span_tokens``; past that it may only finish its current word.
    - At most ``max_spans`` spans; the same span twice in one output is not allowed.
    - ``eos_id`` ends the output (only at a span boundary).
    ``word_start`` is a bool array over the vocabulary (None: every token starts a word).
    """

    def __init__(self, index, sep_id: int, eos_id: int, word_start: np.ndarray | None = None,
                 max_span_tokens: int = 8, max_spans: int = 3):
        if max_spans < 1 or max_span_tokens < 1:
            raise ValueError("max_spans and max_span_tokens must be >= 1")
        self.index, self.sep_id, self.eos_id = index, sep_id, eos_id
        self.max_span_tokens, self.max_spans = max_span_tokens, max_spans
        n = index.vocab_size
        self.word_start = (np.ones(n, dtype=bool) if word_start is None
                           else np.asarray(word_start, dtype=bool)[:n])
        if len(self.word_start) < n:
            raise ValueError(f"word_start covers {len(self.word_start)} tokens but the index "
                             f"vocabulary has {n}; build both from the same tokenizer")
        self._ranges: dict[tuple, tuple[int, int]] = {(): index.range(np.zeros(0, dtype=np.int64))}
        first, _ = index.next_symbols(self._ranges[()])
        self._start = np.asarray(first)[self.word_start[np.asarray(first)]]  # tokens that start a span

    def _range(self, span: tuple) -> tuple[int, int]:
        r = self._ranges.get(span)
        if r is None:
            parent = self._range(span[:-1])
            tok = span[-1]
            r = self.index.extend(parent, tok) if 0 <= tok < self.index.vocab_size else (0, 0)
            if len(self._ranges) > 200_000:
                self._ranges = {(): self._ranges[()]}
            self._ranges[span] = r
        return r

    @staticmethod
    def split(generated: list[int], sep_id: int) -> tuple[list[tuple], tuple]:
        """(finished spans, current span) of a generated sequence."""
        spans, cur = [], []
        for t in generated:
            if t == sep_id:
                spans.append(tuple(cur))
                cur = []
            else:
                cur.append(t)
        return spans, tuple(cur)

    def allowed(self, generated: list[list[int]]) -> list[np.ndarray]:
        states = [self.split(g, self.sep_id) for g in generated]
        open_ = [i for i, (_, cur) in enumerate(states) if cur]
        ranges = [self._range(states[i][1]) for i in open_]
        nexts = dict(zip(open_, zip(ranges, self.index.next_symbols_batch(ranges)))) if open_ else {}
        out = []
        for i, (done, cur) in enumerate(states):
            if not cur:
                out.append(self._start)
                continue
            (lo, hi), (toks, counts) = nexts[i]
            toks = np.asarray(toks)
            ws = self.word_start[toks]
            boundary = (hi - lo) > int(np.sum(counts)) or bool(ws.any())
            cont = toks[~ws] if len(cur) >= self.max_span_tokens else toks
            ends = []
            if boundary and cur not in done:
                ends = [self.eos_id] + ([self.sep_id] if len(done) + 1 < self.max_spans else [])
            out.append(np.concatenate([cont, np.array(ends, dtype=cont.dtype if len(cont) else np.int64)]))
        return out

    def spans(self, generated: list[int]) -> list[tuple]:
        """The complete spans of a finished output (EOS and padding removed)."""
        gen = [t for t in generated if t != self.eos_id]
        done, cur = self.split(gen, self.sep_id)
        return [s for s in done + [cur] if s]


class ConstraintLogitsProcessor(LogitsProcessor):
    """Masks every token the constraint does not allow (then renormalises)."""

    def __init__(self, constraint: Constraint, prompt_len: int, fallback_id: int, renormalize: bool = True):
        self.constraint, self.prompt_len = constraint, prompt_len
        self.fallback_id, self.renormalize = fallback_id, renormalize

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        allowed = self.constraint.allowed(input_ids[:, self.prompt_len:].tolist())
        rows = np.concatenate([np.full(len(a), i) for i, a in enumerate(allowed)] or [np.zeros(0)])
        cols = np.concatenate([np.asarray(a, dtype=np.int64) for a in allowed] or [np.zeros(0)])
        keep = cols < scores.shape[1]
        mask = torch.full_like(scores, float("-inf"))
        mask[torch.as_tensor(rows[keep], dtype=torch.long), torch.as_tensor(cols[keep], dtype=torch.long)] = 0
        empty = torch.isinf(mask).all(dim=1)
        mask[empty, self.fallback_id] = 0  # a dead end can only finish
        scores = scores + mask
        if self.renormalize:
            scores = scores - torch.logsumexp(scores, dim=-1, keepdim=True)
        return scores


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, EOS and padding removed
    text: str
    score: float  # log-probability under the constraint (length_penalty 0)


def constrained_beam_search(model, tokenizer, queries: list[str], constraint: Constraint,
                            num_beams: int = 10, max_new_tokens: int = 32,
                            prompt: str = "{query}", batch_size: int = 8,
                            num_return_sequences: int | None = None, length_penalty: float = 0.0,
                            renormalize: bool = True, max_prompt_tokens: int = 64,
                            progress: bool = False) -> list[list[Hypothesis]]:
    """Beam search where every step obeys ``constraint``; returns hypotheses per query,
    best first. Prompts longer than ``max_prompt_tokens`` are truncated (kept: the end)."""
    if isinstance(queries, str):
        queries = [queries]
    for q in queries:
        if not isinstance(q, str) or not q.strip():
            raise ValueError("an empty query cannot be decoded; give non-empty query strings")
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    nret = num_return_sequences or num_beams
    model.eval()
    out: list[list[Hypothesis]] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for i in tqdm(range(0, len(queries), batch_size), desc="decode", disable=not progress):
            batch = [prompt.format(query=q) for q in queries[i:i + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                            truncation=True, max_length=max_prompt_tokens)
            plen = enc["input_ids"].shape[1]
            proc = ConstraintLogitsProcessor(constraint, plen, eos, renormalize)
            with torch.no_grad():
                gen = model.generate(**enc, num_beams=num_beams, num_return_sequences=nret,
                                     max_new_tokens=max_new_tokens, do_sample=False,
                                     length_penalty=length_penalty, early_stopping=True,
                                     logits_processor=LogitsProcessorList([proc]),
                                     eos_token_id=eos, pad_token_id=pad,
                                     output_scores=True, return_dict_in_generate=True)
            seqs = gen.sequences[:, plen:].tolist()
            scores = gen.sequences_scores.tolist()
            for b in range(len(batch)):
                hyps = []
                for j in range(b * nret, (b + 1) * nret):
                    toks = [t for t in seqs[j] if t not in (eos, pad)]
                    if toks:
                        hyps.append(Hypothesis(toks, tokenizer.decode(toks), scores[j]))
                out.append(hyps)
    finally:
        tokenizer.padding_side = side
    return out


class TrieConstraint(Constraint):
    """Generated tokens must spell a prefix of an ID stored in a ``PrefixTrie``.

    The trie holds sequences of ID tokens (``semantic_id`` flat indices, ``end_token`` =
    the end-of-ID token, 0 there). ``token_offset_or_mapping`` turns a trie token into a
    tokenizer id: an int offset (tokenizer id = offset + trie token) or an array indexed by
    trie token. The end-of-ID token always maps to ``eos_id``, so a beam ends exactly where
    an ID ends; variable-length (pruned) IDs stay prefix-free through it. A prefix that is
    not in the trie (or a finished ID) allows nothing, and the logits processor then
    forces EOS.
    """

    def __init__(self, trie, token_offset_or_mapping, eos_id: int, end_token: int = 0):
        self.trie, self.eos_id, self.end_token = trie, int(eos_id), int(end_token)
        n = int(np.max(trie.labels, initial=end_token)) + 1
        if np.isscalar(token_offset_or_mapping):
            to_tok = int(token_offset_or_mapping) + np.arange(n, dtype=np.int64)
        else:
            to_tok = np.array(token_offset_or_mapping, dtype=np.int64).reshape(-1)
            if len(to_tok) < n:
                raise ValueError(f"the token mapping covers {len(to_tok)} ID tokens but the trie uses "
                                 f"{n}; build both from the same semantic IDs")
        to_tok[self.end_token] = self.eos_id
        if to_tok.min() < 0 or len(np.unique(to_tok)) != len(to_tok):
            raise ValueError("the token mapping must send distinct ID tokens to distinct, "
                             "non-negative tokenizer ids (and none but the end token to EOS)")
        self.to_tok = to_tok
        self.from_tok = np.full(int(to_tok.max()) + 1, -1, dtype=np.int64)
        self.from_tok[to_tok] = np.arange(len(to_tok))

    def to_trie(self, generated) -> np.ndarray:
        """Trie tokens of generated tokenizer ids (-1 for an id that is no ID token)."""
        g = np.asarray(generated, dtype=np.int64).reshape(-1)
        ok = (g >= 0) & (g < len(self.from_tok))
        return np.where(ok, self.from_tok[np.where(ok, g, 0)], -1)

    def allowed(self, generated: list[list[int]]) -> list[np.ndarray]:
        nodes = self.trie.nodes([self.to_trie(g) for g in generated])
        return [self.to_tok[self.trie.children(v)] for v in nodes]

    def items(self, generated) -> np.ndarray:
        """Trie items (sequence indices) of a finished output: the generated ids with or
        without the trailing EOS; empty if they do not spell a complete ID."""
        t = self.to_trie(generated)
        if not len(t) or t[-1] != self.end_token:
            t = np.append(t, self.end_token)
        return self.trie.items(t) if (t >= 0).all() else np.zeros(0, dtype=np.int64)
