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
    FMIndex.load(path)  # sizes only by default
    with pytest.raises(ValueError, match="sha256"):
        FMIndex.load(path, verify=True)
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
