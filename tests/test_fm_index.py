"""fm_index against brute force on random corpora, plus storage and input checks."""

import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fm_index import FMIndex, Range


def occurrences(docs, pattern):
    """(doc id, start in doc) of every occurrence of a non-empty pattern."""
    m = len(pattern)
    return [
        (d, i)
        for d, doc in enumerate(docs)
        for i in range(len(doc) - m + 1)
        if list(doc[i : i + m]) == list(pattern)
    ]


def check_pattern(idx, docs, pattern):
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    occ = occurrences(docs, pattern)
    rng = idx.range(pattern)
    assert idx.count(pattern) == len(occ) == rng[1] - rng[0]
    ext = idx.range([])
    for t in pattern:
        ext = idx.extend(ext, t)
    assert tuple(ext) == tuple(rng) or (ext[0] == ext[1] and rng[0] == rng[1])
    nxt = Counter(docs[d][i + len(pattern)] for d, i in occ if i + len(pattern) < len(docs[d]))
    tokens, counts = idx.next_symbols(rng)
    assert tokens.tolist() == sorted(nxt)
    assert counts.tolist() == [nxt[t] for t in sorted(nxt)]
    starts = sorted(int(offsets[d]) + i for d, i in occ)
    assert idx.locate(rng).tolist() == starts
    assert idx.locate(tuple(rng), length=len(pattern)).tolist() == starts
    doc_ids, pos = idx.doc_positions(starts)
    assert list(zip(doc_ids.tolist(), pos.tolist())) == sorted(occ)
    per_doc = Counter(d for d, _ in occ)
    ids, cnt = idx.documents(tuple(rng))
    assert ids.tolist() == sorted(per_doc)
    assert cnt.tolist() == [per_doc[d] for d in sorted(per_doc)]
    if occ:
        assert len(idx.locate(rng, limit=1)) == 1
        assert idx.documents(rng, limit=1).counts.sum() == 1


@st.composite
def corpora(draw):
    vocab = draw(st.sampled_from([2, 3, 7, 300, 70_000, 2**20]))
    pool = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=8, unique=True))
    doc = st.lists(st.sampled_from(pool), min_size=0, max_size=12)
    docs = draw(st.lists(doc, min_size=1, max_size=10))
    docs += draw(st.lists(st.sampled_from(docs), max_size=3))  # repeated documents
    if not any(docs):
        docs.append([pool[0]])
    patterns = [d[i : i + n] for d in docs for i in range(len(d)) for n in (1, 2, 3) if i + n <= len(d)]
    patterns = draw(st.lists(st.sampled_from(patterns), max_size=6, unique_by=tuple))
    patterns += draw(st.lists(st.lists(st.sampled_from(pool), min_size=1, max_size=4), max_size=3))
    rate = draw(st.sampled_from([1, 2, 3, 32]))
    return vocab, docs, patterns, rate


@settings(max_examples=150, deadline=None)
@given(corpora())
def test_against_brute_force(case):
    vocab, docs, patterns, rate = case
    idx = FMIndex.build(docs, vocab_size=vocab, sa_sample_rate=rate)
    n_tokens = sum(map(len, docs))
    assert (idx.n_docs, idx.n_tokens, idx.vocab_size) == (len(docs), n_tokens, vocab)
    everything = Counter(t for d in docs for t in d)
    tokens, counts = idx.next_symbols(idx.range([]))
    assert dict(zip(tokens.tolist(), counts.tolist())) == everything
    assert tokens.tolist() == sorted(everything)
    assert idx.count([]) == n_tokens + len(docs)
    for p in patterns:
        check_pattern(idx, docs, p)
    ranges = [idx.range(p) for p in patterns] + [idx.range([])]
    batch = idx.next_symbols_batch(ranges)
    for r, (t, c) in zip(ranges, batch):
        single = idx.next_symbols(r)
        assert t.tolist() == single.tokens.tolist() and c.tolist() == single.counts.tolist()
    check_batched(idx, patterns)


def check_batched(idx, patterns):
    """The one-call batch APIs (step, range_batch, locate_batch) agree with the per-range ones."""
    ranges = [idx.range(p[:-1]) for p in patterns if p] + [idx.range([])]
    toks = [p[-1] for p in patterns if p] + [-1]  # -1: no extension, next tokens of the range itself
    s = idx.step([r[0] for r in ranges], [r[1] for r in ranges], toks)
    for i, (r, t) in enumerate(zip(ranges, toks)):
        want = r if t < 0 else idx.extend(r, t)
        assert (s.lo[i], s.hi[i]) == tuple(want)
        nxt = idx.next_symbols(want)
        got = slice(s.offsets[i], s.offsets[i + 1])
        assert s.tokens[got].tolist() == nxt.tokens.tolist() and s.counts[got].tolist() == nxt.counts.tolist()
    lo, hi = idx.range_batch(patterns)
    assert [(a, b) for a, b in zip(lo.tolist(), hi.tolist())] == [tuple(idx.range(p)) for p in patterns]
    found = [i for i, p in enumerate(patterns) if p and hi[i] > lo[i]]
    lengths = [len(patterns[i]) for i in found]
    for limit in (None, 1):
        offsets, bounds = idx.locate_batch(lo[found], hi[found], lengths, limit=limit)
        for j, i in enumerate(found):
            assert offsets[bounds[j]:bounds[j + 1]].tolist() == idx.locate(idx.range(patterns[i]), limit).tolist()


def test_long_documents_and_old_format(tmp_path):
    """Document offsets past 2**16 within a block of 64 (wider deltas), and an index saved in
    format version 1 (int64 arrays, plain document offsets) loads and answers the same."""
    from fm_index import _kernels as K
    from fm_index import _storage

    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 50, rng.integers(0, 3000)).tolist() for _ in range(150)]
    idx = FMIndex.build(docs, vocab_size=50, sa_sample_rate=8)
    assert idx._doc_delta.dtype == np.uint32
    patterns = [docs[d][i:i + 3] for d in (0, 70, 149) for i in (0, 5) if len(docs[d]) > 8]
    for p in patterns:
        check_pattern(idx, docs, p)
    check_batched(idx, patterns)
    old = {k: v for k, v in idx._arrays.items() if not k.startswith("doc_")}
    old.update(doc_offsets=K.unpack_doc_offsets(idx._doc_base, idx._doc_delta),
               alphabet=idx._alphabet.astype(np.int64), lf_offset=idx._lf.astype(np.int64))
    meta = {k: getattr(idx, k) for k in ("n_docs", "n_tokens", "vocab_size", "sa_sample_rate", "tokenizer")}
    version = _storage.FORMAT_VERSION
    try:
        _storage.FORMAT_VERSION = 1
        _storage.save_dir(tmp_path / "v1", old, meta)
    finally:
        _storage.FORMAT_VERSION = version
    assert json.loads((tmp_path / "v1" / "manifest.json").read_text())["format_version"] == 1
    loaded = FMIndex.load(tmp_path / "v1")
    assert loaded.nbytes == idx.nbytes
    for p in patterns:
        check_pattern(loaded, docs, p)


def test_wide_alphabet_three_byte_codes():
    # > 65,534 distinct ids: codes need 3 bytes in the suffix sort
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 2**20, size=rng.integers(0, 40)) for _ in range(4000)]
    docs += docs[:50]
    idx = FMIndex.build(docs)
    assert idx._alphabet.size > 65_534
    for d in (0, 7, 4001):
        doc = docs[d]
        if len(doc) >= 3:
            check_pattern(idx, [list(x) for x in docs], list(doc[1:3]))
    t, c = idx.next_symbols(idx.range([]))
    u, k = np.unique(np.concatenate(docs), return_counts=True)
    assert t.tolist() == u.tolist() and c.tolist() == k.tolist()


def test_boundaries_are_never_crossed_or_returned():
    idx = FMIndex.build([[1, 2], [3], [2]])
    assert idx.count([2, 3]) == 0
    assert idx.next_symbols(idx.range([2])).tokens.tolist() == []
    assert idx.next_symbols(idx.range([1])).tokens.tolist() == [2]


def test_range_type_and_plain_tuples():
    idx = FMIndex.build([[5, 6, 7], [6, 7]])
    r = idx.range([6])
    assert isinstance(r, Range) and r == (r.lo, r.hi) and r.length == 1
    lo, hi = r
    r2 = idx.extend((lo, hi), 7)
    assert r2 == idx.range([6, 7]) and r2.length is None
    with pytest.raises(ValueError, match="length"):
        idx.locate(r2)
    assert idx.locate(r2, length=2).tolist() == [1, 3]
    assert idx.extend(r, 5) == (0, 0)
    with pytest.raises(ValueError, match="non-empty pattern"):
        idx.documents(idx.range([]))
    assert idx.next_symbols_batch([]) == []
    assert idx.locate(r, limit=0).tolist() == []


def _index(tmp_path):
    docs = [[3, 1, 4, 1, 5], [9, 2, 6], [], [5, 3, 5], [1, 4]]
    idx = FMIndex.build(docs, vocab_size=12, sa_sample_rate=2, tokenizer="tok-A")
    path = tmp_path / "idx"
    idx.save(path)
    return docs, idx, path


@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_round_trip(tmp_path, mmap):
    docs, idx, path = _index(tmp_path)
    loaded = FMIndex.load(path, mmap=mmap, tokenizer="tok-A", verify=True)
    assert (loaded.n_docs, loaded.n_tokens, loaded.vocab_size, loaded.tokenizer) == (5, 13, 12, "tok-A")
    for p in ([1], [1, 4], [5], [3, 5], [7], [4, 1, 5]):
        check_pattern(loaded, docs, p)
        assert loaded.range(p) == idx.range(p)
    idx.save(path)  # overwriting an index is fine
    assert FMIndex.load(path).count([1]) == 3


def test_load_errors(tmp_path):
    _, idx, path = _index(tmp_path)
    with pytest.raises(FileNotFoundError, match="no index directory"):
        FMIndex.load(tmp_path / "nope")
    with pytest.raises(ValueError, match="tokenizer"):
        FMIndex.load(path, tokenizer="tok-B")

    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps({**manifest, "n_docs": 4}))
    with pytest.raises(ValueError, match="own checksum.*rebuild"):
        FMIndex.load(path)
    manifest.pop("manifest_sha256")  # as saved before manifests had their own checksum
    (path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99.*rebuild"):
        FMIndex.load(path)
    (path / "manifest.json").write_text(json.dumps({**manifest, "kind": "trie"}))
    with pytest.raises(ValueError, match="not 'fm_index'"):
        FMIndex.load(path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        FMIndex.load(path)
    (path / "manifest.json").write_text(json.dumps(manifest))

    bits = path / "wm_bits.npy"
    data = bits.read_bytes()
    bits.write_bytes(data[:-8])
    with pytest.raises(ValueError, match="truncated"):
        FMIndex.load(path)
    bits.write_bytes(data[:-8] + b"\x01" * 8)
    with pytest.raises(ValueError, match="sha256"):
        FMIndex.load(path)  # verified by default
    with pytest.raises(ValueError, match="wm_bits.*corrupt"):
        FMIndex.load(path, verify=False)  # the structural check still runs
    bits.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        FMIndex.load(path)
    (path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        FMIndex.load(path)

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="refusing"):
        idx.save(other)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


@pytest.mark.parametrize(
    "docs, kwargs, match",
    [
        ([], {}, "empty"),
        ([[], []], {}, "empty"),
        ([[1, -2]], {}, "document 0 has token id -2"),
        ([[1], [4]], {"vocab_size": 3}, "document 1 has token id 4 >= vocab_size=3"),
        ([[1.5, 2.0]], {}, "integers"),
        ([[[1, 2]]], {}, "1-D"),
        ([[1]], {"sa_sample_rate": 0}, "sa_sample_rate"),
        ([[1]], {"tokenizer": 3}, "identity string"),
    ],
)
def test_build_rejects_bad_input(docs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        FMIndex.build(docs, **kwargs)


def test_queries_reject_bad_input():
    idx = FMIndex.build([[1, 2, 3]], vocab_size=5)
    for bad in ([-1], [5], [1.0], [[1]]):
        with pytest.raises(ValueError):
            idx.count(bad)
    for bad in ((0, 99), (3, 2), (0.5, 1), "ab"):
        with pytest.raises(ValueError):
            idx.next_symbols(bad)
    with pytest.raises(ValueError):
        idx.extend(idx.range([]), 5)
    with pytest.raises(ValueError):
        idx.doc_positions([3])
    r = idx.range([1])
    for lo, hi, toks, match in (([0], [99], [1], "0 <= lo <= hi"), ([2], [1], [1], "0 <= lo <= hi"),
                                ([0], [1], [1, 2], "one token per range"), ([0], [1], [5], "vocab_size"),
                                ([0, 1], [1], [1], "same length")):
        with pytest.raises(ValueError, match=match):
            idx.step(lo, hi, toks)
    with pytest.raises(ValueError, match="length >= 1"):
        idx.locate_batch([r.lo], [r.hi], [0])
    with pytest.raises(ValueError, match="document ends"):
        idx.locate_batch([0], [idx.n_rows], [1])


_FAULTS = r"""
import json, sys
from pathlib import Path

import numpy as np

from fm_index import FMIndex
from fm_index import _kernels as K

path = Path(sys.argv[1])
idx = FMIndex.load(path)
patterns = [[t] for t in range(idx.vocab_size)] + [[1, 2], [3, 5], [7, 7], [2, 9, 4]]


def answers(ix):
    out = []
    for p in patterns:
        r = ix.range(p)
        out.append([ix.count(p), list(r), ix.next_symbols(r).tokens.tolist(),
                    ix.locate(r).tolist(), ix.documents(r).doc_ids.tolist()])
    return out


def outcome(verify):
    try:
        got = answers(FMIndex.load(path, mmap=False, verify=verify))
    except (ValueError, OSError) as e:
        return "error: " + str(e)
    return "same" if got == want else "different"


want = answers(idx)
rng = np.random.default_rng(0)
cases = []
for f in sorted(path.glob("*.npy")):
    data = f.read_bytes()
    with open(f, "rb") as fh:
        np.lib.format.read_magic(fh)
        np.lib.format.read_array_header_1_0(fh)
        start = fh.tell()
    flips = [(int(p), 1 << int(rng.integers(8)), "bit") for p in rng.integers(start, len(data), 12)]
    flips += [(int(p), 0xFF, "byte") for p in rng.integers(start, len(data), 6)]
    flips += [(int(p), 0x01, "header") for p in rng.integers(10, start, 2)]
    for pos, mask, kind in flips:
        bad = bytearray(data)
        bad[pos] ^= mask
        f.write_bytes(bytes(bad))
        cases.append({"file": f.stem, "kind": kind, "verified": outcome(True), "unverified": outcome(False)})
    f.write_bytes(data[:-8])
    cases.append({"file": f.stem, "kind": "truncated", "verified": outcome(True), "unverified": outcome(False)})
    f.write_bytes(data)

# an unmarked suffix-array cycle (what corrupt bits can make) ends the walk, it does not loop
arrays = dict(idx._arrays, sa_marks=K.pack_flags(np.zeros(idx.n_rows, bool)))
meta = {k: getattr(idx, k) for k in ("n_docs", "n_tokens", "vocab_size", "sa_sample_rate")}
try:
    FMIndex(arrays, **meta).locate(idx.range([3]))
    walk = "no error"
except ValueError as e:
    walk = str(e)
print(json.dumps({"cases": cases, "walk": walk}))
"""


def test_corrupt_index_never_crashes_or_hangs(tmp_path):
    """Bit and byte flips and truncation in every array file: a verified load always refuses;
    an unverified one (structural check only) refuses every single-bit flip of the arrays the
    kernels index without bounds checks, and never segfaults or hangs (run in a subprocess)."""
    import subprocess
    import sys

    rng = np.random.default_rng(5)
    docs = [rng.integers(0, 40, rng.integers(1, 15)) for _ in range(150)]
    FMIndex.build(docs, vocab_size=40, sa_sample_rate=4).save(tmp_path / "idx")
    proc = subprocess.run([sys.executable, "-c", _FAULTS, str(tmp_path / "idx")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a segfault is returncode -11
    report = json.loads(proc.stdout)
    assert "corrupt" in report["walk"]
    for case in report["cases"]:
        assert case["verified"].startswith("error") and "rebuild" in case["verified"], case
        if case["kind"] == "truncated" or (case["kind"] == "bit" and case["file"] in (
                "wm_bits", "wm_zeros", "lf_offset", "sa_marks", "sa_samples")):
            assert case["unverified"].startswith("error") and "rebuild" in case["unverified"], case
    assert len(report["cases"]) == 8 * 21
