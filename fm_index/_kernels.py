"""Numba kernels: rank bit vectors, wavelet matrix, backward search, locate.

Internal alphabet ("codes"): 0 = end-of-text sentinel, 1 = document separator,
2 + k = the k-th smallest token id of the corpus (``alphabet[k]``).

Bit vectors use an interleaved layout of 64-byte blocks (one cache line): word 0 holds
the number of ones before the block, word 1 packs six 9-bit counts (ones before each data
word inside the block), words 2..7 hold 384 data bits.  A rank reads one cache line and
does one popcount.
"""

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

BLOCK_WORDS = 8
BLOCK_BITS = 384

SENTINEL = 0
SEPARATOR = 1
FIRST_TOKEN_CODE = 2


@intrinsic
def _popcount(typingctx, x):
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@njit(inline="always")
def _rank1(bits, level, i):
    """Number of ones in ``bits[level]`` before position ``i``."""
    blk = i // BLOCK_BITS
    r = i - blk * BLOCK_BITS
    base = blk * BLOCK_WORDS
    w = r >> 6
    rel = (bits[level, base + 1] >> np.uint64(9 * w)) & np.uint64(0x1FF)
    partial = (np.uint64(1) << np.uint64(r & 63)) - np.uint64(1)
    return np.int64(bits[level, base] + rel + _popcount(bits[level, base + 2 + w] & partial))


@njit(inline="always")
def _rank_access(bits, level, i):
    """(rank1 before ``i``, bit at ``i``) of ``bits[level]``."""
    blk = i // BLOCK_BITS
    r = i - blk * BLOCK_BITS
    base = blk * BLOCK_WORDS
    w = r >> 6
    rel = (bits[level, base + 1] >> np.uint64(9 * w)) & np.uint64(0x1FF)
    word = bits[level, base + 2 + w]
    sh = np.uint64(r & 63)
    partial = (np.uint64(1) << sh) - np.uint64(1)
    return np.int64(bits[level, base] + rel + _popcount(word & partial)), np.int64((word >> sh) & np.uint64(1))


@njit(inline="always")
def _set_bit(bits, level, i):
    blk = i // BLOCK_BITS
    r = i - blk * BLOCK_BITS
    bits[level, blk * BLOCK_WORDS + 2 + (r >> 6)] |= np.uint64(1) << np.uint64(r & 63)


@njit(inline="always")
def _fill_block_counts(bits, level):
    acc = np.uint64(0)
    for blk in range(bits.shape[1] // BLOCK_WORDS):
        base = blk * BLOCK_WORDS
        bits[level, base] = acc
        rel = np.uint64(0)
        packed = np.uint64(0)
        for k in range(6):
            packed |= rel << np.uint64(9 * k)
            rel += _popcount(bits[level, base + 2 + k])
        bits[level, base + 1] = packed
        acc += rel


@njit(cache=True)
def n_blocks_words(n):
    """uint64 words of a rank bit vector of ``n`` bits."""
    return (n // BLOCK_BITS + 1) * BLOCK_WORDS


@njit(cache=True)
def pack_flags(flags):
    """Rank bit vector (shape (1, words)) of a boolean array."""
    bits = np.zeros((1, n_blocks_words(flags.size)), np.uint64)
    for i in range(flags.size):
        if flags[i]:
            _set_bit(bits, 0, i)
    _fill_block_counts(bits, 0)
    return bits


@njit(cache=True)
def rank_totals(bits, n):
    """Ones among the first ``n`` bits of each level of a rank bit vector, or -1 for a level
    whose block counts disagree with its data bits or that has a bit set at or past ``n``."""
    levels, words = bits.shape
    out = np.empty(levels, np.int64)
    for lev in range(levels):
        acc = np.uint64(0)
        ok = True
        for blk in range(words // BLOCK_WORDS):
            base = blk * BLOCK_WORDS
            ok = ok and bits[lev, base] == acc
            rel = np.uint64(0)
            packed = np.uint64(0)
            for k in range(6):
                packed |= rel << np.uint64(9 * k)
                word = bits[lev, base + 2 + k]
                keep = n - (blk * BLOCK_BITS + 64 * k)  # bits of this word before position n
                if keep < 64:
                    ok = ok and (word == 0 if keep <= 0 else word >> np.uint64(keep) == 0)
                rel += _popcount(word)
            ok = ok and bits[lev, base + 1] == packed
            acc += rel
        out[lev] = np.int64(acc) if ok else -1
    return out


@njit(cache=True)
def code_intervals(bits, zeros, n):
    """Rows ``[starts[c], ends[c])`` of every code ``c < 2**levels`` after descending the wavelet
    matrix from ``(0, n)`` (in bounds once ``rank_totals`` and ``zeros`` agree)."""
    m = 1 << bits.shape[0]
    starts = np.empty(m, np.int64)
    ends = np.empty(m, np.int64)
    for c in range(m):
        starts[c], ends[c] = _descend(bits, zeros, 0, n, c)
    return starts, ends


@njit(cache=True)
def reversed_text(codes, lengths):
    """Each document reversed and followed by a separator, then the sentinel."""
    text = np.empty(codes.size + lengths.size + 1, np.int32)
    src = 0
    dst = 0
    for d in range(lengths.size):
        ln = lengths[d]
        for j in range(ln):
            text[dst + j] = codes[src + ln - 1 - j]
        src += ln
        dst += ln
        text[dst] = SEPARATOR
        dst += 1
    text[dst] = SENTINEL
    return text


@njit(cache=True)
def bwt_from_sa(text, sa):
    n = text.size
    bwt = np.empty(n, np.int32)
    for i in range(n):
        p = sa[i]
        bwt[i] = text[p - 1] if p > 0 else text[n - 1]
    return bwt


@njit(cache=True)
def build_wavelet_matrix(bwt, sigma, levels):
    """Wavelet matrix of ``bwt``: (bits, zeros per level, LF offset per code).

    LF(i) for code c = lf_offset[c] + (position of i after descending all levels).
    """
    n = bwt.size
    bits = np.zeros((levels, n_blocks_words(n)), np.uint64)
    zeros = np.empty(levels, np.int64)
    cur = bwt.copy()
    nxt = np.empty_like(cur)
    for lev in range(levels):
        shift = levels - 1 - lev
        nz = 0
        for i in range(n):
            if not (cur[i] >> shift) & 1:
                nz += 1
        zeros[lev] = nz
        z = 0
        o = nz
        for i in range(n):
            c = cur[i]
            if (c >> shift) & 1:
                _set_bit(bits, lev, i)
                nxt[o] = c
                o += 1
            else:
                nxt[z] = c
                z += 1
        _fill_block_counts(bits, lev)
        cur, nxt = nxt, cur
    counts = np.zeros(sigma, np.int64)
    start = np.full(sigma, -1, np.int64)
    for i in range(n):
        c = cur[i]
        counts[c] += 1
        if start[c] < 0:
            start[c] = i
    lf_offset = np.empty(sigma, np.int64)
    acc = 0
    for c in range(sigma):
        lf_offset[c] = acc - start[c]
        acc += counts[c]
    return bits, zeros, lf_offset


@njit(inline="always")
def _code_of(alphabet, token):
    k = np.searchsorted(alphabet, token)
    if k < alphabet.size and alphabet[k] == token:
        return k + FIRST_TOKEN_CODE
    return -1


@njit(inline="always")
def _descend(bits, zeros, lo, hi, c):
    """Rows ``lo..hi`` narrowed to code ``c``, down every wavelet-matrix level (empty: lo == hi)."""
    levels = bits.shape[0]
    for lev in range(levels):
        r_lo = _rank1(bits, lev, lo)
        r_hi = _rank1(bits, lev, hi)
        if (c >> (levels - 1 - lev)) & 1:
            lo = zeros[lev] + r_lo
            hi = zeros[lev] + r_hi
        else:
            lo = lo - r_lo
            hi = hi - r_hi
        if lo == hi:
            break
    return lo, hi


@njit(inline="always")
def _extend_code(bits, zeros, lf_offset, lo, hi, c):
    lo, hi = _descend(bits, zeros, lo, hi, c)
    if lo == hi:
        return 0, 0
    return lf_offset[c] + lo, lf_offset[c] + hi


@njit(cache=True)
def extend(bits, zeros, lf_offset, alphabet, lo, hi, token):
    """Backward-search step: the range of the pattern extended on the right by ``token``."""
    if lo >= hi:
        return 0, 0
    c = _code_of(alphabet, token)
    if c < 0:
        return 0, 0
    return _extend_code(bits, zeros, lf_offset, lo, hi, c)


@njit(cache=True)
def pattern_range(bits, zeros, lf_offset, alphabet, pattern, n_rows):
    lo = 0
    hi = n_rows
    for j in range(pattern.size):
        c = _code_of(alphabet, pattern[j])
        if c < 0:
            return 0, 0
        lo, hi = _extend_code(bits, zeros, lf_offset, lo, hi, c)
        if lo == hi:
            return 0, 0
    return lo, hi


@njit(inline="always")
def _distinct(bits, zeros, lo, hi, buf):
    """Distinct codes >= 2 of BWT[lo:hi] as a frontier (rows lo, hi, code of ``buf``, size n).

    Level-by-level wavelet-matrix descent: the nodes of one level are independent, so
    their cache misses overlap; children are appended in order, so codes stay sorted.
    ``buf`` has 6 rows of at least min(hi - lo, sigma) entries.
    """
    levels = bits.shape[0]
    fa, fb, fc, ga, gb, gc = buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]
    fa[0] = lo
    fb[0] = hi
    fc[0] = 0
    n = 1 if hi > lo else 0
    for lev in range(levels):
        z = zeros[lev]
        m = 0
        last = lev == levels - 1
        for j in range(n):
            a = fa[j]
            b = fb[j]
            c = fc[j]
            if last and c == 0:
                continue  # children are the sentinel and the separator
            if b - a == 1:
                r, bit = _rank_access(bits, lev, a)
                ga[m] = z + r if bit else a - r
                gb[m] = ga[m] + 1
                gc[m] = (c << 1) | bit
                m += 1
                continue
            ra = _rank1(bits, lev, a)
            rb = _rank1(bits, lev, b)
            if b - rb > a - ra:
                ga[m] = a - ra
                gb[m] = b - rb
                gc[m] = c << 1
                m += 1
            if rb > ra:
                ga[m] = z + ra
                gb[m] = z + rb
                gc[m] = (c << 1) | 1
                m += 1
        fa, fb, fc, ga, gb, gc = ga, gb, gc, fa, fb, fc
        n = m
    return fa, fb, fc, n


@njit(cache=True)
def next_symbols(bits, zeros, alphabet, lo, hi):
    """Distinct tokens of BWT[lo:hi] (sorted) and their counts."""
    buf = np.empty((6, max(1, min(hi - lo, alphabet.size + 2))), np.int64)
    fa, fb, fc, n = _distinct(bits, zeros, lo, hi, buf)
    tokens = np.empty(n, np.int64)
    counts = np.empty(n, np.int64)
    for j in range(n):
        tokens[j] = alphabet[fc[j] - FIRST_TOKEN_CODE]
        counts[j] = fb[j] - fa[j]
    return tokens, counts


@njit(cache=True)
def locate_text(bits, zeros, lf_offset, marks, samples, rate, lo, hi, n_rows):
    """Text positions (in the reversed text) of rows ``lo..hi-1``, and False if the index is corrupt.

    Each row LF-walks to a sampled row; all rows advance in lockstep, one wavelet-matrix
    level at a time, so their cache misses overlap. A sampled row is at most ``rate - 1``
    steps away; a longer walk, or a position past the text, means a corrupt index.
    """
    levels = bits.shape[0]
    n = hi - lo
    out = np.empty(n, np.int64)
    row = np.arange(lo, hi)
    slot = np.arange(n)
    code = np.empty(n, np.int64)
    steps = 0
    while n > 0:
        m = 0
        for j in range(n):
            r, marked = _rank_access(marks, 0, row[j])
            if marked:
                out[slot[j]] = np.int64(samples[r]) * rate + steps
                if out[slot[j]] >= n_rows:
                    return out, False
            else:
                row[m] = row[j]
                slot[m] = slot[j]
                code[m] = 0
                m += 1
        n = m
        if n > 0 and steps >= rate - 1:
            return out, False
        for lev in range(levels):
            z = zeros[lev]
            for j in range(n):
                r, bit = _rank_access(bits, lev, row[j])
                row[j] = z + r if bit else row[j] - r
                code[j] = (code[j] << 1) | bit
        for j in range(n):
            row[j] += lf_offset[code[j]]
        steps += 1
    return out, True


DOC_BLOCK_SHIFT = 6  # doc_base holds every 64th document offset


def pack_doc_offsets(offsets):
    """``(doc_base, doc_delta)`` of ascending document offsets: every 64th offset (int64) and
    each offset minus its block's base, in the narrowest unsigned dtype that holds them."""
    base = offsets[:: 1 << DOC_BLOCK_SHIFT].astype(np.int64)
    delta = offsets - np.repeat(base, 1 << DOC_BLOCK_SHIFT)[: offsets.size]
    top = int(delta.max(initial=0))
    dtype = np.uint16 if top < 1 << 16 else np.uint32 if top < 1 << 32 else np.uint64
    return base, delta.astype(dtype)


def unpack_doc_offsets(base, delta):
    """The int64 document offsets of ``pack_doc_offsets``."""
    return np.repeat(base, 1 << DOC_BLOCK_SHIFT)[: delta.size] + delta.astype(np.int64)


@njit(inline="always")
def _doc_offset(base, delta, d):
    return base[d >> DOC_BLOCK_SHIFT] + np.int64(delta[d])


@njit(inline="always")
def _doc_of(base, delta, p, gap=1):
    """Document holding position ``p``: of the reversed text with ``gap=1`` (doc d starts at
    offset(d) + d, after d separators), of the forward concatenation with ``gap=0``."""
    lo = 0
    hi = delta.size - 2
    while lo < hi:
        mid = (lo + hi + 1) >> 1
        if _doc_offset(base, delta, mid) + gap * mid <= p:
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit(cache=True)
def doc_positions(base, delta, offsets):
    """(doc id, position within it) of forward offsets."""
    docs = np.empty(offsets.size, np.int64)
    pos = np.empty(offsets.size, np.int64)
    for j in range(offsets.size):
        d = _doc_of(base, delta, offsets[j], 0)
        docs[j] = d
        pos[j] = offsets[j] - _doc_offset(base, delta, d)
    return docs, pos


@njit(inline="always")
def _forward_start(base, delta, p, length):
    d = _doc_of(base, delta, p)
    return _doc_offset(base, delta, d + 1) - (p - _doc_offset(base, delta, d) - d) - length


@njit(cache=True)
def forward_starts(text_pos, base, delta, length):
    """Offsets of the first token in the forward concatenation, sorted."""
    out = np.empty(text_pos.size, np.int64)
    for j in range(text_pos.size):
        out[j] = _forward_start(base, delta, text_pos[j], length)
    out.sort()
    return out


@njit(cache=True)
def doc_counts(text_pos, base, delta):
    """Distinct documents of the positions (sorted) and occurrences per document."""
    docs = np.empty(text_pos.size, np.int64)
    for j in range(text_pos.size):
        docs[j] = _doc_of(base, delta, text_pos[j])
    docs.sort()
    ids = np.empty(docs.size, np.int64)
    counts = np.empty(docs.size, np.int64)
    k = -1
    for j in range(docs.size):
        if k < 0 or docs[j] != ids[k]:
            k += 1
            ids[k] = docs[j]
            counts[k] = 0
        counts[k] += 1
    return ids[: k + 1], counts[: k + 1]


# ------------------------------------------------------------------ batched (one call per decoding step)

@njit(cache=True)
def extend_next_batch(bits, zeros, lf_offset, alphabet, los, his, toks):
    """For each ``i``: extend ``(los[i], his[i])`` by ``toks[i]`` (a negative token: keep the range),
    then the distinct next tokens of the result. Returns the new ``lo, hi`` and the next tokens
    and counts of all ranges concatenated, range ``i`` at ``offsets[i]:offsets[i + 1]``."""
    m = los.size
    lo = np.empty(m, np.int64)
    hi = np.empty(m, np.int64)
    total = 0
    width = 1
    sigma = alphabet.size + 2
    for i in range(m):
        a = los[i]
        b = his[i]
        if toks[i] >= 0 and a < b:
            c = _code_of(alphabet, toks[i])
            if c < 0:
                a, b = 0, 0
            else:
                a, b = _extend_code(bits, zeros, lf_offset, a, b, c)
        elif toks[i] >= 0:
            a, b = 0, 0
        lo[i] = a
        hi[i] = b
        w = min(max(b - a, 0), sigma)
        total += w
        width = max(width, w)
    buf = np.empty((6, width), np.int64)
    tokens = np.empty(total, np.int64)
    counts = np.empty(total, np.int64)
    offsets = np.zeros(m + 1, np.int64)
    k = 0
    for i in range(m):
        fa, fb, fc, n = _distinct(bits, zeros, lo[i], hi[i], buf)
        for j in range(n):
            tokens[k] = alphabet[fc[j] - FIRST_TOKEN_CODE]
            counts[k] = fb[j] - fa[j]
            k += 1
        offsets[i + 1] = k
    return lo, hi, tokens[:k], counts[:k], offsets


@njit(cache=True)
def range_batch(bits, zeros, lf_offset, alphabet, patterns, lengths, n_rows):
    """Row ranges of the patterns ``patterns[i, :lengths[i]]``."""
    lo = np.empty(lengths.size, np.int64)
    hi = np.empty(lengths.size, np.int64)
    for i in range(lengths.size):
        lo[i], hi[i] = pattern_range(bits, zeros, lf_offset, alphabet, patterns[i, : lengths[i]], n_rows)
    return lo, hi


@njit(cache=True)
def locate_batch(bits, zeros, lf_offset, marks, samples, rate, los, his, lengths, n_rows, base, delta):
    """``locate`` of many ranges: forward start offsets (sorted within each range), range ``i`` at
    ``bounds[i]:bounds[i + 1]``, and False if the index is corrupt."""
    bounds = np.zeros(los.size + 1, np.int64)
    for i in range(los.size):
        bounds[i + 1] = bounds[i] + his[i] - los[i]
    out = np.empty(bounds[-1], np.int64)
    for i in range(los.size):
        pos, ok = locate_text(bits, zeros, lf_offset, marks, samples, rate, los[i], his[i], n_rows)
        if not ok:
            return out, bounds, False
        seg = out[bounds[i] : bounds[i + 1]]
        for j in range(pos.size):
            seg[j] = _forward_start(base, delta, pos[j], lengths[i])
        seg.sort()
    return out, bounds, True

