"""Reading the files of every format: text decoding, tab-separated rows, grades, and
graded labels checked against the catalog and the queries, each error naming the file,
the line and the fix."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .dataset import DataError


_LAYOUTS = "expected a Home Depot train.csv(.zip) (or a directory holding one), " \
           "or a directory with products.tsv (TSV), corpus.jsonl (BEIR), " \
           "shopping_queries_dataset_examples.parquet (ESCI), product.csv + label.csv " \
           "(WANDS) or corpus.tsv (Multi-CPR)"


def _need_file(path: Path, fix: str) -> None:
    if not path.is_file():
        raise DataError(f"{path}: missing (or not a file); {fix}")


def _grade(value, where: str, column: str = "relevance") -> float:
    """A finite numeric grade, or a DataError that says where and what was found."""
    try:
        g = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {column} {value!r} is not a number; "
                        "grades must be numeric (e.g. 0, 1, 2.5)") from None
    if not math.isfinite(g):
        raise DataError(f"{where}: {column} {value!r} is not a finite number; "
                        "grades must be numeric (e.g. 0, 1, 2.5)")
    return g


def _used(encoding: str | None) -> str:
    """The encoding recorded for text files read with ``encoding`` and no fallback."""
    return encoding or "utf-8"


def _decode(path: Path, raw: bytes, encoding: str | None, fallback: str | None = None) -> tuple[str, str]:
    """The text of ``raw`` (the bytes of ``path``) and the encoding it was read with:
    ``encoding``, or when None UTF-8 (a leading BOM dropped), else ``fallback``. Bytes
    that do not decode are a DataError naming their offset and line."""
    name = _used(encoding)
    try:
        return raw.decode(name).removeprefix("\ufeff"), name
    except LookupError:
        raise DataError(f"unknown text encoding {encoding!r}; pass e.g. --encoding utf-8 or "
                        "--encoding latin-1") from None
    except UnicodeDecodeError as e:
        if encoding is None and fallback:
            return raw.decode(fallback), fallback
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid {encoding or 'UTF-8'} (byte "
                        f"{raw[e.start]:#04x} at byte offset {e.start}); re-save the file as "
                        f"{encoding or 'UTF-8'} or pass its encoding, e.g. --encoding "
                        f"{'utf-8' if encoding else 'latin-1'}") from None


def _read_text(path: Path, encoding: str | None) -> str:
    return _decode(path, path.read_bytes(), encoding)[0]


def _nonempty(text: str | None, where: str, what: str) -> str:
    if not (text or "").strip():
        raise DataError(f"{where} has an empty {what}; every row needs one (fix or remove the row)")
    return text


class _Labels:
    """Collects graded labels, checking each against the catalog and the queries so that
    an error names the labels file and line (and the file that lacks the id)."""

    def __init__(self, catalog: dict[str, str], queries: dict[str, str],
                 catalog_src: str, queries_src: str) -> None:
        self.catalog, self.queries = catalog, queries
        self.catalog_src, self.queries_src = catalog_src, queries_src
        self.qrels: dict[str, dict[str, float]] = {}
        self._where: dict[tuple[str, str], str] = {}

    def add(self, qid: str, pid: str, grade: float, where: str) -> None:
        if not qid or not pid:
            raise DataError(f"{where}: empty {'query' if not qid else 'product'} id; "
                            "every label needs a query id and a product id")
        if pid not in self.catalog:
            raise DataError(f"{where}: product {pid!r} is not in {self.catalog_src}; "
                            "add the product or remove the label")
        if qid not in self.queries:
            raise DataError(f"{where}: query {qid!r} is not in {self.queries_src}; "
                            "add the query or remove the label")
        rel = self.qrels.setdefault(qid, {})
        if pid in rel and rel[pid] != grade:
            raise DataError(f"{where}: ({qid!r}, {pid!r}) is labelled {grade} here but "
                            f"{rel[pid]} at {self._where[qid, pid]}; keep one label per pair")
        rel[pid] = grade
        self._where[qid, pid] = where


def _read_tsv(path: Path, need: list[str], fix: str = "",
              encoding: str | None = None) -> list[tuple[int, dict[str, str]]]:
    """Rows of a tab-separated file with a header, as (line number, row). Checks that the
    header has the ``need`` columns, that every row has them and no more fields than the
    header (a tab inside a value), and that id columns (those whose name ends in ``id``)
    are non-empty. Values are returned stripped of surrounding whitespace only for the
    id columns."""
    _need_file(path, fix or f"it should be a tab-separated file with columns {need}")
    text = _read_text(path, encoding)
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    if reader.fieldnames is None or any(c not in reader.fieldnames for c in need):
        raise DataError(f"{path}: expected tab-separated header columns {need}, found "
                        f"{reader.fieldnames}; fix the header (the file must be tab-separated)")
    ids = [c for c in need if c.lower().endswith("id")]
    rows = []
    for r in reader:
        line = reader.line_num
        short = [c for c in need if r.get(c) is None]
        if short:
            raise DataError(f"{path}: line {line} has no value for {short} (too few "
                            "tab-separated fields); fix or remove the row")
        if None in r:  # csv's restkey: fields beyond the header
            raise DataError(f"{path}: line {line} has {len(reader.fieldnames) + len(r[None])} "
                            f"tab-separated fields, the header {len(reader.fieldnames)}: a value "
                            "holds a tab; replace it with a space (the format has no quoting)")
        for c in ids:
            r[c] = r[c].strip()
            if not r[c]:
                raise DataError(f"{path}: line {line} has an empty {c}; every row needs one")
        rows.append((line, r))
    return rows


def _unique(rows: list[tuple[int, dict[str, str]]], key: str, value: str,
            path: Path, required: bool = False) -> dict[str, str]:
    """``{row[key]: row[value]}``; a repeated key, or with ``required`` an empty value, is
    a DataError naming the line."""
    out: dict[str, str] = {}
    first: dict[str, int] = {}
    for line, r in rows:
        k = r[key]
        if k in out:
            raise DataError(f"{path}: line {line} repeats {key} {k!r} (first on line "
                            f"{first[k]}); ids must be unique")
        out[k], first[k] = r.get(value) or "", line
        if required:
            _nonempty(out[k], f"{path}: line {line}", value)
    return out
