"""`genret search --queries FILE`: a query file in batches to a TREC run; bad lines refused
with file:line, an existing --out kept."""

from __future__ import annotations

import pytest

from genret.cli import main, read_queries
from genret.eval import Run
from genret.retriever import load_retriever, make_retriever


@pytest.fixture(scope="module")
def bm25_model(tmp_path_factory, synthetic):
    path = tmp_path_factory.mktemp("models") / "bm25"
    make_retriever("bm25").fit(synthetic).save(path)
    return path


def _queries(synthetic, n=7):
    return [(q, synthetic.queries[q]) for q in sorted(synthetic.queries)[:n]]


def test_tsv_file_to_trec_run_in_batches(bm25_model, synthetic, tmp_path, capsys):
    qs = _queries(synthetic)
    f = tmp_path / "q.tsv"
    f.write_text("".join(f"{q}\t{t}\n" for q, t in qs) + "\n")  # a trailing blank line is skipped
    out = tmp_path / "run.trec"
    assert main(["search", "--model", str(bm25_model), "--queries", str(f), "--out", str(out),
                 "--batch", "3", "--k", "5", "--quiet"]) == 0
    assert "7 queries" in capsys.readouterr().err
    got = Run.read_trec(out)
    want = load_retriever(bm25_model).search(dict(qs), 5)
    assert sorted(got) == sorted(q for q, _ in qs)
    for q, _ in qs:
        assert got[q].ids == want[q].ids  # batches of 3 rank exactly as one search call
    assert main(["search", "--model", str(bm25_model), "--queries", str(f), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert Run.read_trec(out).keys() == got.keys()  # the existing run is untouched


def test_plain_file_streams_to_stdout_with_line_numbers(bm25_model, synthetic, tmp_path, capsys):
    qs = _queries(synthetic, 3)
    f = tmp_path / "q.txt"
    f.write_text(f"{qs[0][1]}\n\n{qs[1][1]}\n{qs[2][1]}\n")
    assert main(["search", "--model", str(bm25_model), "--queries", str(f), "--k", "2", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["1", "1", "3", "3", "4", "4"]
    assert [ln.split()[3] for ln in lines] == ["1", "2"] * 3


@pytest.mark.parametrize("text, where, what", [
    ("a\tdrill\nb drill\n", ":2:", "expected 'id<TAB>query text'"),
    ("a\tdrill\na\tsaw\n", ":2:", "appears twice"),
    ("a\tdrill\n\t saw\n", ":2:", "expected 'id<TAB>query text'"),
    ("a b\tdrill\n", ":1:", "holds whitespace"),
    ("drill\nsaw\tblade\n", ":2:", "a tab in a one-query-per-line file"),
    ("\n  \n", "", "holds no queries"),
])
def test_bad_lines_are_refused_with_file_and_line(bm25_model, tmp_path, capsys, text, where, what):
    f = tmp_path / "q.tsv"
    f.write_text(text)
    out = tmp_path / "run.trec"
    assert main(["search", "--model", str(bm25_model), "--queries", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("genret search: error: ") and len(err.splitlines()) == 1
    assert f"{f}{where}" in err and what in err
    assert not out.exists()


def test_undecodable_file_and_argument_mixups(bm25_model, tmp_path, capsys):
    f = tmp_path / "q.txt"
    f.write_bytes(b"drill\nsaw \xff\n")
    with pytest.raises(ValueError, match=r"q.txt:2: not UTF-8"):
        read_queries(str(f))
    assert main(["search", "--model", str(bm25_model), "--queries", str(f), "drill"]) == 2
    assert "either query words or --queries" in capsys.readouterr().err
    assert main(["search", "--model", str(bm25_model)]) == 2
    assert main(["search", "--model", str(bm25_model), "--queries", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
