"""FM-index over documents of integer token ids, with right-extension and next-token sets."""

import operator
import sys
import time
from typing import NamedTuple

import numpy as np

from . import _kernels as K
from ._storage import FORMAT_VERSION, load_dir, save_dir

_ARRAYS = ("wm_bits", "wm_zeros", "lf_offset", "alphabet", "sa_marks", "sa_samples", "doc_base", "doc_delta")
_ARRAYS_V1 = ("wm_bits", "wm_zeros", "lf_offset", "alphabet", "sa_marks", "sa_samples", "doc_offsets")


class Range(tuple):
    """Half-open row interval ``(lo, hi)`` of a pattern; ``length`` is the pattern length.

    Compares and unpacks like the plain tuple ``(lo, hi)``. ``length`` is ``None`` when the
    range was extended from a plain tuple (then ``locate`` needs ``length=``).
    """

    def __new__(cls, lo, hi, length=None):
        self = tuple.__new__(cls, (lo, hi))
        self.length = length
        return self

    def __getnewargs__(self):
        return self[0], self[1], self.length

    lo = property(operator.itemgetter(0))
    hi = property(operator.itemgetter(1))

    def __repr__(self):
        return f"Range(lo={self[0]}, hi={self[1]}, length={self.length})"


class Symbols(NamedTuple):
    """Distinct next tokens (ascending) and how often each follows the pattern."""

    tokens: np.ndarray
    counts: np.ndarray


class Step(NamedTuple):
    """Result of ``FMIndex.step``: the extended ranges ``(lo[i], hi[i])`` and their next tokens
    and counts, concatenated; range ``i``'s are ``tokens[offsets[i]:offsets[i + 1]]``."""

    lo: np.ndarray
    hi: np.ndarray
    tokens: np.ndarray
    counts: np.ndarray
    offsets: np.ndarray


class Documents(NamedTuple):
    """Documents containing the pattern (ascending ids) and occurrences in each."""

    doc_ids: np.ndarray
    counts: np.ndarray


def _log(progress, t0, stage):
    if progress:
        print(f"fm_index: {stage} ({time.perf_counter() - t0:.2f} s)", file=sys.stderr, flush=True)


def _int(value, what):
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None


def _read_docs(docs):
    """Concatenated token ids (int64) and document lengths, checked."""
    parts, lengths = [], []
    for i, doc in enumerate(docs):
        arr = np.asarray(doc)
        if arr.ndim != 1:
            raise ValueError(f"document {i} must be a 1-D sequence of token ids, got shape {arr.shape}")
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"document {i} has dtype {arr.dtype}; token ids must be integers")
        if arr.size:
            parts.append(arr)
        lengths.append(arr.size)
    if not parts:
        raise ValueError("the corpus is empty: pass at least one document with at least one token")
    return np.concatenate(parts, dtype=np.int64, casting="same_kind"), np.asarray(lengths, np.int64)


class FMIndex:
    """FM-index of a document collection: count, right-extend, next tokens, locate.

    The text is every document reversed and followed by a separator (then a sentinel),
    so extending a pattern on the right is one backward-search step. Rows of the index
    are suffixes of that text; a pattern is a half-open row range ``(lo, hi)``.
    Offsets returned by ``locate`` index the concatenation of the original documents
    (no separators), at the pattern's first token; ``doc_positions`` maps them to
    ``(doc id, position in doc)``.
    """

    def __init__(self, arrays, *, n_docs, n_tokens, vocab_size, sa_sample_rate, tokenizer=None):
        self.n_docs = int(n_docs)
        self.n_tokens = int(n_tokens)
        self.vocab_size = int(vocab_size)
        self.sa_sample_rate = int(sa_sample_rate)
        self.tokenizer = tokenizer
        self.n_rows = self.n_tokens + self.n_docs + 1
        if min(self.n_docs, self.n_tokens, self.vocab_size, self.sa_sample_rate) < 1:
            raise ValueError("n_docs, n_tokens, vocab_size and sa_sample_rate must be >= 1; "
                             "the index is corrupt, rebuild it")
        self._check_shapes(arrays)
        arrays = {k: _cache_aligned(a) if a.ndim == 2 else a for k, a in arrays.items()}
        for arr in arrays.values():
            arr.flags.writeable = False  # one numba specialisation for built and loaded arrays
        self._arrays = arrays
        self._bits = arrays["wm_bits"]
        self._zeros = arrays["wm_zeros"]
        self._lf = arrays["lf_offset"]
        self._alphabet = arrays["alphabet"]
        self._marks = arrays["sa_marks"]
        self._samples = arrays["sa_samples"]
        self._doc_base = arrays["doc_base"]
        self._doc_delta = arrays["doc_delta"]
        self._first_token_row = self.n_docs + 1  # rows below start with the sentinel/separator

    def _check_shapes(self, arrays):
        sigma = arrays["alphabet"].shape[0] + 2
        levels = max(1, (sigma - 1).bit_length())
        words = K.n_blocks_words(self.n_rows)
        want = {
            "wm_bits": ((levels, words), np.uint64),
            "wm_zeros": ((levels,), np.int64),
            "lf_offset": ((sigma,), _offset_dtype(self.n_rows)),
            "alphabet": ((sigma - 2,), _id_dtype(self.vocab_size)),
            "sa_marks": ((1, words), np.uint64),
            "sa_samples": (((self.n_rows - 1) // self.sa_sample_rate + 1,), np.uint32),
            "doc_base": (((self.n_docs >> K.DOC_BLOCK_SHIFT) + 1,), np.int64),
            "doc_delta": ((self.n_docs + 1,), arrays["doc_delta"].dtype),
        }
        if arrays["doc_delta"].dtype not in (np.uint16, np.uint32, np.uint64):
            want["doc_delta"] = ((self.n_docs + 1,), np.uint32)  # any unsigned width; name one
        for name, (shape, dtype) in want.items():
            arr = arrays[name]
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(
                    f"array {name!r} is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape} "
                    "for the sizes in the manifest; the index is corrupt, rebuild it"
                )

    def _check_structure(self, where):
        """O(n) consistency checks of everything the kernels index without bounds checks
        (rank counts, zero counts, LF offsets, SA samples, document offsets), so that a
        corrupt index raises here instead of crashing or hanging a later query."""
        n, sigma, a = self.n_rows, self._alphabet.size + 2, self._alphabet

        def corrupt(what):
            return ValueError(f"{where}: {what}; the index is corrupt, rebuild it with "
                              "FMIndex.build(...).save(path)")

        if a.size and (a[0] < 0 or a[-1] >= self.vocab_size or np.any(np.diff(a) <= 0)):
            raise corrupt(f"alphabet is not ascending token ids below vocab_size={self.vocab_size}")
        ones = K.rank_totals(self._bits, n)
        marks = K.rank_totals(self._marks, n)[0]
        if np.any(ones < 0) or marks < 0:
            raise corrupt(f"{'sa_marks' if marks < 0 else 'wm_bits'} rank counts disagree with its bits")
        if not np.array_equal(self._zeros, n - ones):
            raise corrupt("wm_zeros disagree with wm_bits")
        starts, ends = K.code_intervals(self._bits, self._zeros, n)
        counts = ends - starts
        if counts[0] != 1 or counts[1] != self.n_docs or np.any(counts[2:sigma] < 1) or np.any(counts[sigma:]):
            raise corrupt("wm_bits do not hold one end marker, n_docs separators and each alphabet token")
        first_row = np.cumsum(counts[:sigma]) - counts[:sigma]
        if not np.array_equal(self._lf, first_row - starts[:sigma]):
            raise corrupt("lf_offset disagrees with the wavelet matrix")
        if marks != self._samples.size:
            raise corrupt(f"sa_marks mark {marks} rows but there are {self._samples.size} SA samples")
        if not np.array_equal(np.sort(self._samples), np.arange(self._samples.size)):
            raise corrupt("sa_samples are not the sampled text positions")
        d = K.unpack_doc_offsets(self._doc_base, self._doc_delta)
        if np.any(self._doc_delta[:: 1 << K.DOC_BLOCK_SHIFT]):
            raise corrupt("doc_delta is not 0 at the start of each block")
        if d[0] != 0 or d[-1] != self.n_tokens or np.any(np.diff(d) < 0):
            raise corrupt("doc_offsets are not ascending from 0 to n_tokens")

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, docs, vocab_size=None, sa_sample_rate=32, progress=False, tokenizer=None):
        """Index ``docs`` (iterable of 1-D int sequences; document order = doc id).

        ``vocab_size`` defaults to max id + 1; ``tokenizer`` is an identity string stored
        in the manifest and checked by ``load``.
        """
        t0 = time.perf_counter()
        rate = _int(sa_sample_rate, "sa_sample_rate")
        if rate < 1:
            raise ValueError(f"sa_sample_rate must be >= 1, got {rate}")
        if tokenizer is not None and not isinstance(tokenizer, str):
            raise ValueError(f"tokenizer must be an identity string or None, got {type(tokenizer).__name__}")
        tokens, lengths = _read_docs(docs)
        doc_offsets = np.zeros(lengths.size + 1, np.int64)
        np.cumsum(lengths, out=doc_offsets[1:])
        if tokens.min() < 0:
            bad = int(np.argmax(tokens < 0))
            doc = int(np.searchsorted(doc_offsets, bad, "right")) - 1
            raise ValueError(f"document {doc} has token id {tokens[bad]}; token ids must be >= 0")
        top = int(tokens.max())
        if vocab_size is None:
            vocab_size = top + 1
        vocab_size = _int(vocab_size, "vocab_size")
        if top >= vocab_size:
            bad = int(np.argmax(tokens >= vocab_size))
            doc = int(np.searchsorted(doc_offsets, bad, "right")) - 1
            raise ValueError(f"document {doc} has token id {tokens[bad]} >= vocab_size={vocab_size}")
        alphabet, inverse = np.unique(tokens, return_inverse=True)
        codes = inverse.astype(np.int32) + np.int32(K.FIRST_TOKEN_CODE)
        del inverse
        _log(progress, t0, f"read {lengths.size} documents, {tokens.size} tokens, {alphabet.size} distinct")
        text = K.reversed_text(codes, lengths)
        del codes
        sigma = alphabet.size + 2
        sa = _suffix_array(text, sigma)
        _log(progress, t0, "suffix array")
        bwt = K.bwt_from_sa(text, sa)
        del text
        levels = max(1, (sigma - 1).bit_length())
        bits, zeros, lf_offset = K.build_wavelet_matrix(bwt, sigma, levels)
        del bwt
        _log(progress, t0, f"wavelet matrix ({levels} levels)")
        marked = sa % rate == 0
        samples = sa[marked] // rate
        if samples.size and samples.max() > np.iinfo(np.uint32).max:
            raise ValueError(f"text too long for sa_sample_rate={rate}; use a larger sample rate")
        arrays = {
            "wm_bits": bits,
            "wm_zeros": zeros,
            "lf_offset": lf_offset.astype(_offset_dtype(tokens.size + lengths.size + 1)),
            "alphabet": alphabet.astype(_id_dtype(vocab_size)),
            "sa_marks": K.pack_flags(marked),
            "sa_samples": samples.astype(np.uint32),
        }
        arrays["doc_base"], arrays["doc_delta"] = K.pack_doc_offsets(doc_offsets)
        _log(progress, t0, "sampled suffix array")
        return cls(
            arrays,
            n_docs=lengths.size,
            n_tokens=tokens.size,
            vocab_size=vocab_size,
            sa_sample_rate=rate,
            tokenizer=tokenizer,
        )

    # ---------------------------------------------------------------- queries
    def _rows(self, rng):
        try:
            lo, hi = rng
            lo = operator.index(lo)
            hi = operator.index(hi)
        except (TypeError, ValueError):
            raise ValueError(f"a range is a pair of integers (lo, hi), got {rng!r}") from None
        if not 0 <= lo <= hi <= self.n_rows:
            raise ValueError(f"range {rng!r} is outside this index (0 <= lo <= hi <= {self.n_rows})")
        return lo, hi

    def _token(self, token):
        t = _int(token, "a token id")
        if not 0 <= t < self.vocab_size:
            raise ValueError(f"token id {t} is outside [0, vocab_size={self.vocab_size})")
        return t

    def _pattern(self, pattern):
        arr = np.asarray(pattern)
        if arr.ndim != 1:
            raise ValueError(f"a pattern is a 1-D sequence of token ids, got shape {arr.shape}")
        if not arr.size:
            return np.empty(0, np.int64)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"a pattern holds integer token ids, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if arr.min() < 0 or arr.max() >= self.vocab_size:
            raise ValueError(f"pattern token ids must lie in [0, vocab_size={self.vocab_size})")
        return arr

    def _limit(self, lo, hi, limit):
        if limit is not None:
            limit = _int(limit, "limit")
            if limit < 0:
                raise ValueError(f"limit must be >= 0, got {limit}")
            hi = min(hi, lo + limit)
        if lo < min(hi, self._first_token_row):
            raise ValueError("this range includes document ends (the empty pattern's range); "
                             "locate and documents need the range of a non-empty pattern")
        return hi

    def range(self, pattern):
        """Row range of ``pattern``; empty pattern -> the whole index, absent -> ``hi == lo``."""
        p = self._pattern(pattern)
        lo, hi = K.pattern_range(self._bits, self._zeros, self._lf, self._alphabet, p, self.n_rows)
        return Range(lo, hi, p.size)

    def count(self, pattern):
        """Occurrences of ``pattern`` inside documents (the empty pattern: n_tokens + n_docs)."""
        p = self._pattern(pattern)
        if not p.size:
            return self.n_tokens + self.n_docs
        lo, hi = K.pattern_range(self._bits, self._zeros, self._lf, self._alphabet, p, self.n_rows)
        return hi - lo

    def extend(self, rng, token):
        """Range of the pattern of ``rng`` followed by ``token`` (one backward-search step)."""
        lo, hi = self._rows(rng)
        lo, hi = K.extend(self._bits, self._zeros, self._lf, self._alphabet, lo, hi, self._token(token))
        length = getattr(rng, "length", None)
        return Range(lo, hi, None if length is None else length + 1)

    def next_symbols(self, rng):
        """Distinct tokens that follow the pattern inside a document, ascending, with counts."""
        lo, hi = self._rows(rng)
        return Symbols(*K.next_symbols(self._bits, self._zeros, self._alphabet, lo, hi))

    def next_symbols_batch(self, ranges):
        """``next_symbols`` for a list of ranges in one kernel call."""
        rows = np.array([self._rows(r) for r in ranges], dtype=np.int64).reshape(-1, 2)
        _, _, tokens, counts, offsets = K.extend_next_batch(
            self._bits, self._zeros, self._lf, self._alphabet, rows[:, 0].copy(), rows[:, 1].copy(),
            np.full(len(rows), -1, np.int64))
        bounds = offsets.tolist()
        return [Symbols(tokens[a:b], counts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

    def _row_arrays(self, lo, hi):
        lo = np.ascontiguousarray(lo, dtype=np.int64).reshape(-1)
        hi = np.ascontiguousarray(hi, dtype=np.int64).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"lo and hi must have the same length, got {lo.size} and {hi.size}")
        if lo.size and (lo.min() < 0 or np.any(lo > hi) or hi.max() > self.n_rows):
            raise ValueError(f"ranges must satisfy 0 <= lo <= hi <= {self.n_rows} (ranges of this index)")
        return lo, hi

    def step(self, lo, hi, tokens):
        """One decoding step for many ranges in one kernel call: extend range ``i`` by
        ``tokens[i]`` (a negative token keeps the range as it is), then the next tokens of every
        result. Returns ``Step(lo, hi, tokens, counts, offsets)`` (see :class:`Step`)."""
        lo, hi = self._row_arrays(lo, hi)
        tok = np.ascontiguousarray(tokens, dtype=np.int64).reshape(-1)
        if tok.shape != lo.shape:
            raise ValueError(f"step needs one token per range, got {tok.size} tokens for {lo.size} ranges")
        if tok.size and tok.max() >= self.vocab_size:
            raise ValueError(f"token ids must be < vocab_size={self.vocab_size} (negative: no extension)")
        return Step(*K.extend_next_batch(self._bits, self._zeros, self._lf, self._alphabet, lo, hi, tok))

    def range_batch(self, patterns):
        """Row ranges ``(lo, hi)`` (int64 arrays) of many patterns, in one kernel call."""
        pats = [self._pattern(p) for p in patterns]
        lengths = np.array([p.size for p in pats], np.int64)
        mat = np.zeros((len(pats), int(lengths.max(initial=0))), np.int64)
        for i, p in enumerate(pats):
            mat[i, : p.size] = p
        return K.range_batch(self._bits, self._zeros, self._lf, self._alphabet, mat, lengths, self.n_rows)

    def locate_batch(self, lo, hi, lengths, limit=None):
        """``locate`` for many ranges of patterns of ``lengths`` in one kernel call: the offsets of
        range ``i`` (sorted, at most ``limit``) are ``offsets[bounds[i]:bounds[i + 1]]``."""
        lo, hi = self._row_arrays(lo, hi)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64).reshape(-1)
        if lengths.shape != lo.shape or (lengths.size and lengths.min() < 1):
            raise ValueError("locate_batch needs one pattern length >= 1 per range")
        if limit is not None:
            hi = np.minimum(hi, lo + max(_int(limit, "limit"), 0))
        if np.any(lo < np.minimum(hi, self._first_token_row)):
            raise ValueError("a range includes document ends (the empty pattern's range); "
                             "locate needs the ranges of non-empty patterns")
        out, bounds, ok = K.locate_batch(self._bits, self._zeros, self._lf, self._marks, self._samples,
                                         self.sa_sample_rate, lo, hi, lengths, self.n_rows,
                                         self._doc_base, self._doc_delta)
        if not ok:
            raise ValueError("the index is corrupt (a suffix-array walk left the text); rebuild it "
                             "with FMIndex.build(...).save(path)")
        return out, bounds

    def locate(self, rng, limit=None, length=None):
        """Sorted offsets of the pattern's first token in the concatenated documents.

        ``length`` (the pattern length) is taken from a ``Range``; pass it for a plain tuple.
        With ``limit``, at most ``limit`` occurrences (the first rows of the range).
        """
        lo, hi = self._rows(rng)
        if length is None:
            length = getattr(rng, "length", None)
        if length is None:
            raise ValueError("locate needs the pattern length: pass a Range from range()/extend() "
                             "or length=len(pattern)")
        length = _int(length, "length")
        if length < 1:
            raise ValueError("the empty pattern has no occurrences to locate")
        hi = self._limit(lo, hi, limit)
        return K.forward_starts(self._text_positions(lo, hi), self._doc_base, self._doc_delta, length)

    def _text_positions(self, lo, hi):
        pos, ok = K.locate_text(self._bits, self._zeros, self._lf, self._marks, self._samples,
                                self.sa_sample_rate, lo, hi, self.n_rows)
        if not ok:
            raise ValueError("the index is corrupt (a suffix-array walk left the text); rebuild it "
                             "with FMIndex.build(...).save(path), or load it with verify=True to "
                             "find the damaged file")
        return pos

    def documents(self, rng, limit=None):
        """Documents that contain the pattern and occurrence counts (``limit`` caps occurrences read)."""
        lo, hi = self._rows(rng)
        hi = self._limit(lo, hi, limit)
        return Documents(*K.doc_counts(self._text_positions(lo, hi), self._doc_base, self._doc_delta))

    def doc_positions(self, offsets):
        """Map offsets from ``locate`` to ``(doc_ids, positions within the document)``."""
        off = np.asarray(offsets)
        if off.size and off.dtype.kind not in "iu":
            raise ValueError(f"offsets must be integers, got dtype {off.dtype}")
        off = off.astype(np.int64, copy=False)
        if off.size and (off.min() < 0 or off.max() >= self.n_tokens):
            raise ValueError(f"offsets must lie in [0, n_tokens={self.n_tokens})")
        return K.doc_positions(self._doc_base, self._doc_delta, off)

    @property
    def alphabet(self):
        """The distinct token ids of the indexed text, ascending (read-only)."""
        return self._alphabet

    # ---------------------------------------------------------------- storage
    @property
    def nbytes(self):
        """Bytes of all arrays (what count/extend/next_symbols/locate/documents read)."""
        return sum(a.nbytes for a in self._arrays.values())

    def save(self, path, overwrite=False):
        """Save to directory ``path`` atomically (temp dir, then rename).

        ``path`` must be absent, an empty directory or a saved index; another genret artifact
        only with ``overwrite=True``; any other folder is refused.
        """
        meta = {
            "n_docs": self.n_docs,
            "n_tokens": self.n_tokens,
            "vocab_size": self.vocab_size,
            "sa_sample_rate": self.sa_sample_rate,
            "tokenizer": self.tokenizer,
        }
        save_dir(path, self._arrays, meta, overwrite)

    @classmethod
    def load(cls, path, mmap=True, tokenizer=None, verify=True):
        """Load a saved index (memory-mapped by default).

        Always checks the manifest, array headers, file sizes and the arrays' structure (O(n):
        a corrupt index raises a ValueError, it never crashes or hangs a query). ``verify``
        (default) also checks each file's sha256; ``verify=False`` skips that for a huge index
        already checked once: a damaged file that stays structurally sound then gives wrong
        results instead of an error. A ``tokenizer`` identity must match the manifest's.
        """
        arrays, m = load_dir(path, {1: _ARRAYS_V1, FORMAT_VERSION: _ARRAYS}, mmap, tokenizer, verify)
        if m["format_version"] == 1:  # int64 alphabet, LF offsets and document offsets: pack them
            arrays["doc_base"], arrays["doc_delta"] = K.pack_doc_offsets(arrays.pop("doc_offsets"))
            arrays["alphabet"] = arrays["alphabet"].astype(_id_dtype(m.get("vocab_size", 1)))
            arrays["lf_offset"] = arrays["lf_offset"].astype(
                _offset_dtype(m.get("n_tokens", 0) + m.get("n_docs", 0) + 1))
        try:
            meta = {k: m[k] for k in ("n_docs", "n_tokens", "vocab_size", "sa_sample_rate")}
            index = cls(arrays, **meta, tokenizer=m.get("tokenizer"))
        except (KeyError, TypeError) as e:
            raise ValueError(f"the manifest in {path} is incomplete ({e}); rebuild the index") from None
        index._check_structure(path)
        return index

    def __repr__(self):
        return (f"FMIndex(n_docs={self.n_docs}, n_tokens={self.n_tokens}, vocab_size={self.vocab_size}, "
                f"nbytes={self.nbytes})")


def _id_dtype(vocab_size):
    """Narrowest dtype of the alphabet (token ids below ``vocab_size``)."""
    return np.uint16 if vocab_size <= 1 << 16 else np.uint32 if vocab_size <= 1 << 32 else np.int64


def _offset_dtype(n_rows):
    """dtype of ``lf_offset`` (row offsets, possibly negative, of an index of ``n_rows`` rows)."""
    return np.int32 if n_rows < 1 << 31 else np.int64


def _cache_aligned(arr):
    """``arr`` itself if it starts on a 64-byte boundary (rank blocks = cache lines), else an aligned copy."""
    if arr.ctypes.data % 64 == 0:
        return arr
    buf = np.empty(arr.nbytes + 64, np.uint8)
    start = -buf.ctypes.data % 64
    out = buf[start : start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    out[...] = arr
    return out


def _suffix_array(text, sigma):
    """Suffix array of the code sequence ``text`` via pysais on a fixed-width byte encoding.

    Codes become big-endian ``width``-byte words (width from the compacted alphabet, so
    usually 2); byte suffixes at positions divisible by ``width`` sort exactly like the
    code suffixes.
    """
    from PySAIS import sais  # imports PyTables: keep it out of module import

    width = max(1, ((sigma - 1).bit_length() + 7) // 8)
    enc = np.empty((text.size, width), np.uint8)
    for b in range(width):
        enc[:, b] = (text >> (8 * (width - 1 - b))) & 0xFF
    sa = np.asarray(sais(enc.tobytes(), reduce_size=False))
    del enc
    if width > 1:
        sa = sa[sa % width == 0] // width
    return sa.astype(np.int64, copy=False)
