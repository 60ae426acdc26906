"""Constrained beam search: a ``LogitsProcessor`` that asks a constraint, batched over
all beams at every step, which tokens may come next.

A constraint keeps a state per beam (numpy arrays, one row per beam) and advances all of
them by one token per step in one call; the processor finds each beam's parent row of the
previous step by a hash of its generated tokens (beam search reorders rows) and builds the
mask as one boolean tensor. HF beam search applies processors to log-probabilities; by
default the processor renormalises them over the allowed tokens, so a beam's score is the
log-probability of its sequence *under the constraint* (with ``length_penalty=0`` the plain sum).

Because of that renormalisation, the output layer only needs the rows of the tokens a
constraint can ever allow (``Constraint.vocabulary``): :func:`restricted_head` computes those
logits alone (the others are the dtype's minimum, so their probability is exactly 0), which
leaves every beam score unchanged and, on MiniLM's 30.5k-row vocabulary, cuts the output
layer to the catalog's ~10.7k title tokens (multispan) or the ~770 ID tokens (semantic IDs).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

NOOP = -1  # a "token" that leaves a state as it is (pads ragged rows when replaying)


class Constraint:
    """Which tokens may follow each beam, as a batched state machine over beams.

    A state is a dict of numpy arrays with one row per beam. ``start(n)`` is the state of
    ``n`` empty outputs, ``advance(state, tokens)`` appends one token to every row
    (``NOOP``: none), ``mask(state, vocab_size)`` is the boolean ``(rows, vocab_size)``
    matrix of allowed next tokens.
    """

    vocab_size: int  # ids the constraint may allow are below this

    def start(self, n: int) -> dict:
        raise NotImplementedError

    def advance(self, state: dict, tokens: np.ndarray) -> dict:
        raise NotImplementedError

    def mask(self, state: dict, vocab_size: int) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def take(state: dict, rows: np.ndarray) -> dict:
        """The states of ``rows`` (per-beam arrays only; step results are recomputed)."""
        return {k: v[rows] for k, v in state.items() if not k.startswith("_")}

    def replay(self, generated) -> dict:
        """The state after each row of ``generated`` (a 2-D array, or ragged lists)."""
        if isinstance(generated, np.ndarray) and generated.ndim == 2:
            mat = generated.astype(np.int64, copy=False)
        else:
            rows = [np.asarray(g, dtype=np.int64).reshape(-1) for g in generated]
            mat = np.full((len(rows), max((len(r) for r in rows), default=0)), NOOP, dtype=np.int64)
            for i, r in enumerate(rows):
                mat[i, :len(r)] = r
        state = self.start(len(mat))
        for j in range(mat.shape[1]):
            state = self.advance(state, mat[:, j])
        return state

    def allowed(self, generated) -> list[np.ndarray]:
        """Sorted allowed next ids after each generated sequence (prompt excluded)."""
        m = self.mask(self.replay(generated), self.vocab_size)
        return [np.flatnonzero(row) for row in m]

    def vocabulary(self) -> np.ndarray | None:
        """Every token id some state may allow, ascending; None when not known."""
        return None


class FMIndexSpanConstraint(Constraint):
    """Every span must occur in the catalog; ``sep_id`` ends a span and starts the next.

    - A span starts at a word start (``word_start[token]``) and may only end where some
      occurrence of it is followed by a word start or the end of a title.
    - A span grows to ``max_span_tokens``; past that it may only finish its current word.
    - At most ``max_spans`` spans; the same span twice in one output is not allowed.
    - ``eos_id`` ends the output (only at a span boundary).
    ``word_start`` is a bool array over the vocabulary (None: every token starts a word).

    State per beam: the FM-index range and length of the open span, the finished spans'
    ranges, and whether the output has ended. A step is one ``FMIndex.step`` call (extend +
    next tokens for every beam) and a few array operations; no loop over beams.
    """

    def __init__(self, index, sep_id: int, eos_id: int, word_start: np.ndarray | None = None,
                 max_span_tokens: int = 8, max_spans: int = 3):
        if max_spans < 1 or max_span_tokens < 1:
            raise ValueError("max_spans and max_span_tokens must be >= 1")
        self.index, self.sep_id, self.eos_id = index, int(sep_id), int(eos_id)
        self.max_span_tokens, self.max_spans = max_span_tokens, max_spans
        n = index.vocab_size
        self.word_start = (np.ones(n, dtype=bool) if word_start is None
                           else np.asarray(word_start, dtype=bool)[:n])
        if len(self.word_start) < n:
            raise ValueError(f"word_start covers {len(self.word_start)} tokens but the index "
                             f"vocabulary has {n}; build both from the same tokenizer")
        self.vocab_size = max(n, self.sep_id + 1, self.eos_id + 1)
        self._root = index.range(np.zeros(0, dtype=np.int64))
        first, _ = index.next_symbols(self._root)
        self._start = np.zeros(self.vocab_size, dtype=bool)  # tokens that start a span
        self._start[first[self.word_start[first]]] = True

    def vocabulary(self) -> np.ndarray:
        return np.union1d(np.asarray(self.index.alphabet, dtype=np.int64), [self.sep_id, self.eos_id])

    def start(self, n: int) -> dict:
        return {"lo": np.full(n, self._root[0], dtype=np.int64), "hi": np.full(n, self._root[1], dtype=np.int64),
                "length": np.zeros(n, dtype=np.int64), "ndone": np.zeros(n, dtype=np.int64),
                "done": np.zeros((n, self.max_spans, 3), dtype=np.int64), "dead": np.zeros(n, dtype=bool)}

    def advance(self, state: dict, tokens: np.ndarray) -> dict:
        st = {k: v.copy() for k, v in self.take(state, slice(None)).items()}
        tok = np.asarray(tokens, dtype=np.int64)
        live = (tok != NOOP) & ~st["dead"]
        sep = live & (tok == self.sep_id)
        full = sep & (st["ndone"] >= self.max_spans)
        outside = (tok < 0) | (tok >= self.index.vocab_size)
        st["dead"] |= (live & (tok == self.eos_id)) | full | (live & ~sep & outside)
        sep &= ~full
        ext = live & ~st["dead"] & ~sep
        if sep.any():
            r = np.flatnonzero(sep)
            st["done"][r, st["ndone"][r]] = np.stack([st["lo"][r], st["hi"][r], st["length"][r]], axis=1)
            st["ndone"][r] += 1
            st["lo"][r], st["hi"][r], st["length"][r] = self._root[0], self._root[1], 0
        open_ = ~st["dead"] & ((st["length"] > 0) | ext)  # rows whose next tokens come from the index
        # beams often share their open span: one index step per distinct (range, token)
        key = np.stack([np.where(open_, st["lo"], 0), np.where(open_, st["hi"], 0), np.where(ext, tok, -1)], 1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        step = self.index.step(uniq[:, 0], uniq[:, 1], uniq[:, 2])
        st["lo"] = np.where(open_, step.lo[inv], st["lo"])
        st["hi"] = np.where(open_, step.hi[inv], st["hi"])
        st["length"] = st["length"] + ext
        st["dead"] |= open_ & (st["lo"] >= st["hi"])  # a span that is not in the catalog
        cnt = np.diff(step.offsets)[inv]  # next tokens of every row, as (row, token, count) triples
        rows = np.repeat(np.arange(len(tok)), cnt)
        pos = np.arange(int(cnt.sum())) + np.repeat(step.offsets[inv] - (np.cumsum(cnt) - cnt), cnt)
        st["_next"] = (rows, step.tokens[pos], step.counts[pos])
        return st

    def mask(self, state: dict, vocab_size: int) -> np.ndarray:
        n = len(state["lo"])
        rows, toks, counts = state["_next"] if "_next" in state else self.advance(state, np.full(n, NOOP))["_next"]
        out = np.zeros((n, vocab_size), dtype=bool)
        at_root = ~state["dead"] & (state["length"] == 0)
        out[at_root] = self._start[:vocab_size] if vocab_size <= self.vocab_size else np.pad(
            self._start, (0, vocab_size - self.vocab_size))
        is_open = ~state["dead"] & (state["length"] > 0)
        ws = self.word_start[toks]
        keep = is_open[rows] & ~(ws & (state["length"][rows] >= self.max_span_tokens)) & (toks < vocab_size)
        out[rows[keep], toks[keep]] = True
        follow = np.bincount(rows, weights=counts, minlength=n)  # occurrences with a next token
        starts_word = np.bincount(rows, weights=ws, minlength=n) > 0
        boundary = (state["hi"] - state["lo"] > follow) | starts_word
        span = np.stack([state["lo"], state["hi"], state["length"]], axis=1)[:, None, :]
        repeat = ((state["done"] == span).all(axis=2)
                  & (np.arange(self.max_spans)[None, :] < state["ndone"][:, None])).any(axis=1)
        end = is_open & boundary & ~repeat
        if self.eos_id < vocab_size:
            out[end, self.eos_id] = True
        if self.sep_id < vocab_size:
            out[end & (state["ndone"] + 1 < self.max_spans), self.sep_id] = True
        return out

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

    def spans(self, generated: list[int]) -> list[tuple]:
        """The complete spans of a finished output (EOS and padding removed)."""
        gen = [t for t in generated if t != self.eos_id]
        done, cur = self.split(gen, self.sep_id)
        return [s for s in done + [cur] if s]


class ConstraintLogitsProcessor(LogitsProcessor):
    """Masks every token the constraint does not allow (then renormalises).

    Usable from a stock ``model.generate(..., logits_processor=LogitsProcessorList([proc]))``
    with greedy or beam search: the prompt length is the input's length at the first step
    (``prompt_len`` fixes it instead); prompts must be left-padded (all rows generate from the
    same column), and with ``pad_id`` a right-padded batch is refused. The processor keeps the
    beams' states between steps and starts over when a new ``generate`` begins (the input is
    not the previous one plus one token). ``seconds`` (wall), ``cpu_seconds`` (process time)
    and ``steps`` count its own work.
    """

    def __init__(self, constraint: Constraint, prompt_len: int | None = None, fallback_id: int | None = None,
                 renormalize: bool = True, pad_id: int | None = None):
        self.constraint, self.prompt_len, self.renormalize, self.pad_id = constraint, prompt_len, renormalize, pad_id
        self.fallback_id = getattr(constraint, "eos_id", None) if fallback_id is None else fallback_id
        if self.fallback_id is None:
            raise ValueError("fallback_id is needed: the token a beam with no allowed token must take (EOS)")
        self._state = self._prompt = self._hash = None
        self.seconds, self.cpu_seconds, self.steps = 0.0, 0.0, 0

    @staticmethod
    def _hashes(gen: np.ndarray) -> np.ndarray:
        """A 64-bit polynomial hash of each row (rows of one length)."""
        h = np.zeros(len(gen), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j in range(gen.shape[1]):
                h = h * np.uint64(1_000_003) + (gen[:, j].astype(np.uint64) + np.uint64(1))
        return h

    def _begin(self, ids: np.ndarray) -> None:
        plen = ids.shape[1] if self.prompt_len is None else self.prompt_len
        if self.pad_id is not None and self.prompt_len is None:
            right = (ids[:, -1] == self.pad_id) & (ids != self.pad_id).any(axis=1)
            if right.any():
                raise ValueError(f"prompt row {int(np.argmax(right))} ends with the pad token: the batch is "
                                 "right-padded; set tokenizer.padding_side = 'left' so every row generates "
                                 "from the same column")
        self._plen, self._prompt = plen, ids[:, :plen].copy()

    def _states(self, ids: np.ndarray) -> dict:
        fresh = (self._state is None or ids.shape[1] != self._len + 1 or len(ids) != len(self._prompt)
                 or not np.array_equal(ids[:, :self._plen], self._prompt))
        if fresh:
            self._begin(ids)
        gen = ids[:, self._plen:]
        if not fresh and gen.shape[1]:
            parent = self._hashes(gen[:, :-1])
            order = np.argsort(self._hash)
            pos = np.minimum(np.searchsorted(self._hash[order], parent), len(order) - 1)
            if (self._hash[order][pos] == parent).all():
                return self.constraint.advance(self.constraint.take(self._state, order[pos]), gen[:, -1])
        return self.constraint.replay(gen)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t0, c0 = time.perf_counter(), time.process_time()
        ids = input_ids.detach().cpu().numpy()
        state = self._states(ids)
        self._state, self._len, self._hash = state, ids.shape[1], self._hashes(ids[:, self._plen:])
        allowed = self.constraint.mask(state, scores.shape[1])
        allowed[~allowed.any(axis=1), self.fallback_id] = True  # a dead end can only finish
        allowed = torch.from_numpy(allowed).to(scores.device)
        scores = torch.where(allowed, scores, scores.new_tensor(float("-inf")))  # faster than masked_fill
        if self.renormalize:
            scores = scores.log_softmax(dim=-1)  # = scores - logsumexp; torch's logsumexp is ~5x slower here
        self.seconds += time.perf_counter() - t0
        self.cpu_seconds += time.process_time() - c0
        self.steps += 1
        return scores


class _RestrictedHead(torch.nn.Module):
    """An output layer that computes the logits of ``ids`` only; every other logit is the
    dtype's minimum (probability exactly 0 after a softmax). Same output shape as ``head``."""

    def __init__(self, head: torch.nn.Module, ids: np.ndarray):
        super().__init__()
        self.register_buffer("ids", torch.as_tensor(ids, dtype=torch.long, device=head.weight.device))
        self.weight = head.weight.detach()[self.ids]
        bias = getattr(head, "bias", None)
        self.bias = None if bias is None else bias.detach()[self.ids]
        self.out_features = head.weight.shape[0]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        part = torch.nn.functional.linear(hidden, self.weight.to(hidden.dtype),
                                          None if self.bias is None else self.bias.to(hidden.dtype))
        out = part.new_full((*part.shape[:-1], self.out_features), torch.finfo(part.dtype).min)
        out[..., self.ids] = part
        return out


@contextlib.contextmanager
def restricted_head(model, ids):
    """While active, ``model``'s output layer computes only the logits of token ``ids`` (see
    the module docstring: exact for renormalised constrained decoding, and faster). A no-op
    when ``ids`` is None or the model has no plain linear output layer."""
    head = model.get_output_embeddings() if ids is not None else None
    if not isinstance(head, torch.nn.Linear):
        yield model
        return
    model.set_output_embeddings(_RestrictedHead(head, np.asarray(ids)))
    try:
        yield model
    finally:
        model.set_output_embeddings(head)


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
                            restrict_head: bool = True, progress: bool = False) -> list[list[Hypothesis]]:
    """Beam search where every step obeys ``constraint``; returns hypotheses per query,
    best first. Prompts longer than ``max_prompt_tokens`` are truncated (kept: the end).
    ``restrict_head`` (with ``renormalize``): the output layer computes only the logits of
    ``constraint.vocabulary()`` (:func:`restricted_head`; same scores, less time)."""
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
    vocab = constraint.vocabulary() if restrict_head and renormalize else None
    if vocab is not None:
        vocab = np.union1d(vocab, [eos])
    try:
        for i in tqdm(range(0, len(queries), batch_size), desc="decode", disable=not progress):
            batch = [prompt.format(query=q) for q in queries[i:i + batch_size]]
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False,
                            truncation=True, max_length=max_prompt_tokens)
            plen = enc["input_ids"].shape[1]
            proc = ConstraintLogitsProcessor(constraint, fallback_id=eos, renormalize=renormalize, pad_id=pad)
            with torch.no_grad(), restricted_head(model, vocab):
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
        self.vocab_size = len(self.from_tok)

    def to_trie(self, generated) -> np.ndarray:
        """Trie tokens of generated tokenizer ids (-1 for an id that is no ID token)."""
        g = np.asarray(generated, dtype=np.int64).reshape(-1)
        ok = (g >= 0) & (g < len(self.from_tok))
        return np.where(ok, self.from_tok[np.where(ok, g, 0)], -1)

    def vocabulary(self) -> np.ndarray:
        return np.unique(self.to_tok)

    def start(self, n: int) -> dict:
        return {"node": np.zeros(n, dtype=np.int64)}

    def advance(self, state: dict, tokens: np.ndarray) -> dict:
        tok = np.asarray(tokens, dtype=np.int64)
        return {"node": np.where(tok == NOOP, state["node"], self.trie.step(state["node"], self.to_trie(tok)))}

    def mask(self, state: dict, vocab_size: int) -> np.ndarray:
        rows, labels = self.trie.children_batch(state["node"])
        ids = self.to_tok[labels]
        out = np.zeros((len(state["node"]), vocab_size), dtype=bool)
        keep = ids < vocab_size
        out[rows[keep], ids[keep]] = True
        return out

    def items(self, generated) -> np.ndarray:
        """Trie items (sequence indices) of a finished output: the generated ids with or
        without the trailing EOS; empty if they do not spell a complete ID."""
        t = self.to_trie(generated)
        if not len(t) or t[-1] != self.end_token:
            t = np.append(t, self.end_token)
        return self.trie.items(t) if (t >= 0).all() else np.zeros(0, dtype=np.int64)
