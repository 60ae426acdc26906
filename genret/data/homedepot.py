"""The Home Depot ``train.csv`` (or its zip)."""

from __future__ import annotations

import csv
import io
import os
import reprlib
import zipfile
from pathlib import Path

from .dataset import DEFAULT_THRESHOLD, Dataset, DataError, _split_all, query_id
from .files import _LAYOUTS, _decode, _grade, _need_file


def _read_homedepot_bytes(path: Path) -> bytes:
    _need_file(path, "pass the Home Depot train.csv or train.csv.zip "
                     "(../shared/data/homedepot/train.csv.zip)")
    raw: bytes
    if path.suffix.lower() == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if n.lower().endswith(".csv")
                           and not n.startswith("__MACOSX/") and not Path(n).name.startswith(".")]
                if not members:
                    raise DataError(f"{path}: the zip holds no .csv member (it has "
                                    f"{zf.namelist()[:5]}); it should contain train.csv")
                members.sort(key=lambda n: (Path(n).name != "train.csv", n))
                raw = zf.read(members[0])
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
            raise DataError(f"{path}: not a readable zip ({e}); re-download the file") from None
    else:
        raw = path.read_bytes()
    return raw


def _csv_rows(reader, path: Path):
    """The rows of ``reader``; a row the csv module cannot parse is a DataError."""
    try:
        yield from reader
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({e}); fix the line, "
                        "or pass the Home Depot train.csv") from None


def load_homedepot(path: str | os.PathLike, threshold: float | None = None,
                   encoding: str | None = None) -> Dataset:
    """The Home Depot ``train.csv`` (or its zip): read as ``encoding``, by default UTF-8
    when it decodes, else latin-1 (the competition file's); one product per product_uid
    with its first title variant; one query per distinct ``search_term``.

    Rows are taken in the order of the ``id`` column (the file's own order) when it is
    present, so shuffling the rows changes nothing: not the title kept for a duplicated
    product_uid, not the order of the catalog.
    """
    path = Path(path)
    text, used = _decode(path, _read_homedepot_bytes(path), encoding, fallback="latin-1")
    if "\x00" in text:
        raise DataError(f"{path}: holds binary data (NUL bytes), not a CSV file; {_LAYOUTS}")
    reader = csv.reader(io.StringIO(text))
    rows_in = _csv_rows(reader, path)
    header = next(rows_in, None)
    need = ["product_uid", "product_title", "search_term", "relevance"]
    if header is None or any(c not in header for c in need):
        raise DataError(f"{path}: expected columns {need} in the header, found "
                        f"{reprlib.repr(header)}; is this the Home Depot train.csv?")
    col = {c: header.index(c) for c in need}
    id_col = header.index("id") if "id" in header else None
    width = max(col.values()) + 1 if id_col is None else max(max(col.values()), id_col) + 1
    rows: list[tuple[int, int, list[str]]] = []  # (order key, line, row)
    seen_ids: dict[int, int] = {}
    for row in rows_in:
        line = reader.line_num
        if not row:
            continue
        if len(row) < width:
            raise DataError(f"{path}: line {line} has {len(row)} fields, expected "
                            f"{len(header)} ({', '.join(header)}); fix or remove the row")
        key = len(rows)
        if id_col is not None:
            try:
                key = int(row[id_col])
            except ValueError:
                raise DataError(f"{path}: line {line} has id {row[id_col]!r}, not an integer; "
                                "the id column orders the rows") from None
            if key in seen_ids:
                raise DataError(f"{path}: line {line} repeats id {key} (first on line "
                                f"{seen_ids[key]}); ids must be unique")
            seen_ids[key] = line
        rows.append((key, line, row))
    if not rows:
        raise DataError(f"{path}: no data rows below the header")
    rows.sort(key=lambda r: r[0])
    catalog: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, float]] = {}
    for _, line, row in rows:
        where = f"{path}: line {line}"
        pid, query = row[col["product_uid"]].strip(), row[col["search_term"]]
        for name, value in (("product_uid", pid), ("search_term", query)):
            if not value.strip():
                raise DataError(f"{where}: empty {name}; every row needs a product_uid and a "
                                "search_term (fix or remove the row)")
        grade = _grade(row[col["relevance"]], where)
        catalog.setdefault(pid, row[col["product_title"]])
        qid = query_id(query)
        if queries.setdefault(qid, query) != query:
            raise DataError(f"{where}: query id {qid} collides for {queries[qid]!r} and "
                            f"{query!r}; report this (query_id needs more hash digits)")
        rel = qrels.setdefault(qid, {})
        if pid in rel and rel[pid] != grade:
            raise DataError(f"{where}: ({query!r}, product_uid {pid}) is labelled twice with "
                            f"different grades ({rel[pid]} and {grade}); keep one")
        rel[pid] = grade
    return Dataset("homedepot", catalog, queries, qrels,
                   DEFAULT_THRESHOLD["homedepot"] if threshold is None else threshold,
                   _split_all(queries), encoding=used)
