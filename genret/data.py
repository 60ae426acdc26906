"""Datasets: catalog, queries, graded qrels, the protocol split and query buckets.

The evaluation protocol is the one of ``shared/data/homedepot/README.md``: one query per
distinct query string, relevant = grade >= threshold, split by
``sha1(query.strip().lower()) % 10`` (0 = test, 1 = dev, else train), and evaluated
queries are those of the split with at least one relevant product.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import reprlib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "dev", "test")
BUCKETS = ("head", "torso", "tail")
DEFAULT_THRESHOLD = {"homedepot": 2.5, "wands": 2.0, "esci": 3.0}
_TERM = re.compile(r"\w+")


class DataError(ValueError):
    """Bad or missing input data; the message names the file, the row and the fix."""


def protocol_split(query: str) -> str:
    """The sha1 split of the protocol: 0 -> test, 1 -> dev, anything else -> train."""
    h = int(hashlib.sha1(query.strip().lower().encode("utf-8")).hexdigest(), 16) % 10
    return "test" if h == 0 else "dev" if h == 1 else "train"


def query_id(query: str) -> str:
    """A stable id for a query string (independent of file order)."""
    return "q" + hashlib.sha1(query.encode("utf-8")).hexdigest()[:12]


def terms(text: str) -> list[str]:
    """Lower-cased word tokens, the unit of the bucket proxy."""
    return _TERM.findall(text.lower())


@dataclass
class Dataset:
    """A product-search dataset under the evaluation protocol.

    ``qrels`` keeps every graded label (non-relevant ones are useful negatives);
    ``relevant(q)`` applies the threshold. ``query_split`` maps each query id to a split.
    ``query_freq`` (optional) drives the head/torso/tail buckets when the data has it.
    ``encoding`` is the one its text files were read with (None for generated data).
    """

    name: str
    catalog: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]
    threshold: float
    query_split: dict[str, str]
    descriptions: dict[str, str] = field(default_factory=dict)
    query_freq: dict[str, float] | None = None
    encoding: str | None = None

    def __post_init__(self) -> None:
        unknown = [p for rel in self.qrels.values() for p in rel if p not in self.catalog]
        if unknown:
            raise DataError(f"{self.name}: qrels name {len(unknown)} products missing from the "
                            f"catalog (e.g. {unknown[0]!r}); fix the qrels or add the products")
        missing = [q for q in self.qrels if q not in self.queries]
        if missing:
            raise DataError(f"{self.name}: qrels name unknown query {missing[0]!r}; "
                            "every qrels query id must appear in the queries file")
        self._buckets: dict[str, str] | None = None

    @property
    def product_ids(self) -> list[str]:
        return list(self.catalog)

    @property
    def titles(self) -> list[str]:
        return list(self.catalog.values())

    def relevant(self, qid: str) -> dict[str, float]:
        """Products with grade >= threshold for this query, with their grades."""
        return {p: g for p, g in self.qrels.get(qid, {}).items() if g >= self.threshold}

    def split(self, name: str, evaluated_only: bool = True) -> list[str]:
        """Query ids of a split ('train', 'dev', 'test' or 'all'), sorted by id.

        With ``evaluated_only`` (the protocol) only queries with a relevant product.
        """
        if name not in (*SPLITS, "all"):
            raise DataError(f"unknown split {name!r}; use one of train, dev, test, all")
        qids = [q for q, s in self.query_split.items() if name in ("all", s)]
        if evaluated_only:
            qids = [q for q in qids if self.relevant(q)]
        return sorted(qids)

    def buckets(self) -> dict[str, str]:
        """Query id -> 'head' | 'torso' | 'tail'.

        With a query-frequency column: terciles of frequency (head = most frequent).
        Otherwise the documented proxy: terciles of the catalog document frequency of the
        query's rarest term (tail = rarest; a term absent from the catalog has df 0).
        Tercile cut points come from all queries of the dataset, so they do not move
        with the split.
        """
        if self._buckets is None:
            qids = sorted(self.queries)
            if self.query_freq is not None:
                value = np.array([self.query_freq.get(q, 0.0) for q in qids], dtype=float)
            else:
                df: dict[str, int] = {}
                for title in self.catalog.values():
                    for t in set(terms(title)):
                        df[t] = df.get(t, 0) + 1
                value = np.array([min((df.get(t, 0) for t in terms(self.queries[q])), default=0)
                                  for q in qids], dtype=float)
            lo, hi = np.quantile(value, [1 / 3, 2 / 3]) if len(value) else (0.0, 0.0)
            self._buckets = {q: "tail" if v <= lo else "torso" if v <= hi else "head"
                             for q, v in zip(qids, value)}
        return self._buckets

    def subset(self, qids: list[str], n_products: int | None = None, seed: int = 0) -> "Dataset":
        """A smaller dataset: these queries, and (optionally) a catalog of ``n_products``
        that keeps every labelled product of those queries plus seeded random others."""
        qset = set(qids)
        catalog = self.catalog
        if n_products is not None and n_products < len(self.catalog):
            keep = {p for q in qids for p in self.qrels.get(q, {})}
            rest = sorted((p for p in self.catalog if p not in keep),
                          key=lambda p: hashlib.sha1(f"{seed}:{p}".encode()).digest())
            keep |= set(rest[: max(0, n_products - len(keep))])
            catalog = {p: t for p, t in self.catalog.items() if p in keep}
        sub = Dataset(
            name=self.name, catalog=catalog,
            queries={q: t for q, t in self.queries.items() if q in qset},
            qrels={q: r for q, r in self.qrels.items() if q in qset},
            threshold=self.threshold,
            query_split={q: s for q, s in self.query_split.items() if q in qset},
            descriptions={p: d for p, d in self.descriptions.items() if p in catalog},
            query_freq=self.query_freq, encoding=self.encoding,
        )
        sub._buckets = {q: b for q, b in self.buckets().items() if q in qset}
        return sub

    def catalog_fingerprint(self) -> str:
        """sha256 over the product ids and titles (in catalog order): what an index built
        on this catalog depends on. Recorded by every saved retriever at fit time."""
        return _fingerprint(("P", p, t) for p, t in self.catalog.items())

    def fingerprint(self) -> str:
        """sha256 over everything an evaluation depends on: catalog, queries, their splits,
        every graded label and the relevance threshold."""
        return _fingerprint([("C", self.catalog_fingerprint()), ("T", repr(float(self.threshold)))]
                            + [("Q", q, t, self.query_split.get(q, "")) for q, t in self.queries.items()]
                            + [("R", q, p, repr(float(g))) for q, rel in self.qrels.items()
                               for p, g in rel.items()])

    def summary(self) -> dict:
        return {"name": self.name, "products": len(self.catalog), "queries": len(self.queries),
                "threshold": self.threshold, "encoding": self.encoding,
                **{f"{s}_queries": len(self.split(s)) for s in SPLITS}}


def _fingerprint(records) -> str:
    h = hashlib.sha256()
    for rec in records:
        h.update("\x1f".join(rec).encode("utf-8") + b"\x1e")
    return "sha256:" + h.hexdigest()


# ----------------------------------------------------------------------------- loaders

def default_data_path() -> Path | None:
    """``$GENRET_DATA``, else ``../shared/data/homedepot/train.csv.zip`` seen from the
    working directory or from the repository root; None when none exists."""
    env = os.environ.get("GENRET_DATA")
    if env:
        return Path(env)
    rel = Path("..") / "shared" / "data" / "homedepot" / "train.csv.zip"
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / rel).exists():
            return (base / rel).resolve()
    return None


_LAYOUTS = "expected a Home Depot train.csv(.zip) (or a directory holding one), " \
           "or a directory with products.tsv (TSV), corpus.jsonl (BEIR), " \
           "shopping_queries_dataset_examples.parquet (ESCI), product.csv + label.csv " \
           "(WANDS) or corpus.tsv (Multi-CPR)"


def load_dataset(path: str | os.PathLike | None = None, threshold: float | None = None,
                 encoding: str | None = None) -> Dataset:
    """Load a dataset, choosing the format from what ``path`` holds.

    ``encoding`` of the text files; None: UTF-8, and for the Home Depot CSV latin-1 when
    it is no valid UTF-8 (the competition file is latin-1). The one used is
    ``dataset.encoding``.

    - a file (``*.csv`` / ``*.zip`` with Home Depot columns) -> :func:`load_homedepot`
    - a directory with ``products.tsv`` -> :func:`load_tsv_dir`
    - a directory with ``corpus.jsonl`` -> :func:`load_beir`
    - a directory with ``shopping_queries_dataset_examples.parquet`` -> :func:`load_esci`
    - a directory with ``label.csv`` -> :func:`load_wands`
    - a directory with ``corpus.tsv`` -> :func:`load_multicpr`
    - a directory with ``train.csv.zip`` or ``train.csv`` -> :func:`load_homedepot`
    """
    if path is None:
        path = default_data_path()
        if path is None:
            raise DataError("no dataset given: pass --data PATH or set GENRET_DATA (the Home "
                            "Depot file is ../shared/data/homedepot/train.csv.zip)")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory; pass --data PATH or set GENRET_DATA")
    if p.is_file():
        return load_homedepot(p, threshold, encoding)
    for marker, loader in (("products.tsv", load_tsv_dir), ("corpus.jsonl", load_beir),
                           ("shopping_queries_dataset_examples.parquet", load_esci),
                           ("label.csv", load_wands), ("corpus.tsv", load_multicpr)):
        if (p / marker).exists():
            return loader(p, threshold, encoding=encoding)
    for name in ("train.csv.zip", "train.csv"):
        if (p / name).is_file():
            return load_homedepot(p / name, threshold, encoding)
    raise DataError(f"{p}: not a known dataset layout; {_LAYOUTS}")


def _split_all(queries: dict[str, str]) -> dict[str, str]:
    return {q: protocol_split(t) for q, t in queries.items()}


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


def load_tsv_dir(path: str | os.PathLike, threshold: float | None = None,
                 encoding: str | None = None) -> Dataset:
    """``products.tsv`` (product_id, title[, description]), ``queries.tsv`` (query_id,
    query[, split][, frequency]), ``qrels.tsv`` (query_id, product_id, relevance).
    UTF-8 (or ``encoding``), tab-separated, one header line, no quoting. Default
    threshold 1."""
    d = Path(path)
    fix = "the TSV layout needs products.tsv, queries.tsv and qrels.tsv"
    prows = _read_tsv(d / "products.tsv", ["product_id", "title"], fix, encoding)
    qrows = _read_tsv(d / "queries.tsv", ["query_id", "query"], fix, encoding)
    rrows = _read_tsv(d / "qrels.tsv", ["query_id", "product_id", "relevance"], fix, encoding)
    catalog = _unique(prows, "product_id", "title", d / "products.tsv")
    descriptions = ({r["product_id"]: r.get("description") or "" for _, r in prows}
                    if prows and "description" in prows[0][1] else {})
    queries = _unique(qrows, "query_id", "query", d / "queries.tsv", required=True)
    if qrows and "split" in qrows[0][1]:
        split = {}
        for line, r in qrows:
            s = (r.get("split") or "").strip()
            if s not in SPLITS:
                raise DataError(f"{d / 'queries.tsv'}: line {line}: query {r['query_id']!r} has "
                                f"split {s!r}; use train, dev or test (or drop the split "
                                "column to use the sha1 rule)")
            split[r["query_id"]] = s
    else:
        split = _split_all(queries)
    freq = None
    if qrows and "frequency" in qrows[0][1]:
        freq = {r["query_id"]: _grade(r.get("frequency") or 0, f"{d / 'queries.tsv'}: line {line}",
                                      "frequency") for line, r in qrows}
    labels = _Labels(catalog, queries, str(d / "products.tsv"), str(d / "queries.tsv"))
    for line, r in rrows:
        where = f"{d / 'qrels.tsv'}: line {line}"
        labels.add(r["query_id"], r["product_id"], _grade(r["relevance"], where), where)
    return Dataset(d.name, catalog, queries, labels.qrels, 1.0 if threshold is None else threshold,
                   split, descriptions, freq, _used(encoding))


def _read_jsonl(path: Path, fix: str, encoding: str | None) -> list[tuple[int, dict]]:
    _need_file(path, fix)
    out = []
    for i, line in enumerate(_read_text(path, encoding).splitlines(), start=1):
        if line.strip():
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i} is not valid JSON ({e.msg}); "
                                "one JSON object per line") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}: line {i} is a JSON {type(obj).__name__}, not an "
                                "object; one JSON object per line")
            out.append((i, obj))
    return out


def _jsonl_id(obj: dict, path: Path, line: int, seen: dict[str, int]) -> str:
    if obj.get("_id") is None or not str(obj["_id"]).strip():
        raise DataError(f"{path}: line {line} has no _id (or an empty one); every line needs one")
    k = str(obj["_id"]).strip()
    if k in seen:
        raise DataError(f"{path}: line {line} repeats _id {k!r} (first on line {seen[k]}); "
                        "ids must be unique")
    seen[k] = line
    return k


def load_beir(path: str | os.PathLike, threshold: float | None = None,
              encoding: str | None = None) -> Dataset:
    """BEIR layout: ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text),
    ``qrels/{train,dev,test}.tsv`` (header ``query-id corpus-id score``). The title is
    the product text (the body ``text`` when the title is empty); ``text`` is also kept
    as the description. The qrels file names the split of its queries (a query in two
    files is an error); a query in none of them is split by the sha1 rule. Default
    threshold 1."""
    d = Path(path)
    fix = "the BEIR layout needs corpus.jsonl, queries.jsonl and qrels/{train,dev,test}.tsv"
    catalog, descriptions, queries = {}, {}, {}
    seen: dict[str, int] = {}
    for i, doc in _read_jsonl(d / "corpus.jsonl", fix, encoding):
        pid = _jsonl_id(doc, d / "corpus.jsonl", i, seen)
        catalog[pid] = str(doc.get("title") or doc.get("text") or "")
        descriptions[pid] = str(doc.get("text") or "")
    seen = {}
    for i, q in _read_jsonl(d / "queries.jsonl", fix, encoding):
        qid = _jsonl_id(q, d / "queries.jsonl", i, seen)
        text = q.get("text")
        queries[qid] = _nonempty(None if text is None else str(text), f"{d / 'queries.jsonl'}: line {i}",
                                 "text")
    files = [f for f in ((d / "qrels" / f"{s}.tsv") for s in SPLITS) if f.exists()]
    if not files:
        raise DataError(f"{d / 'qrels'}: no train.tsv, dev.tsv or test.tsv; {fix}")
    split = _split_all(queries)
    labelled_in: dict[str, Path] = {}
    labels = _Labels(catalog, queries, str(d / "corpus.jsonl"), str(d / "queries.jsonl"))
    for f in files:
        for line, r in _read_tsv(f, ["query-id", "corpus-id", "score"], fix, encoding):
            where = f"{f}: line {line}"
            qid = r["query-id"]
            if labelled_in.setdefault(qid, f) != f:
                raise DataError(f"{where}: query {qid!r} is also labelled in {labelled_in[qid]}; "
                                "a query belongs to one split")
            labels.add(qid, r["corpus-id"], _grade(r["score"], where, "score"), where)
            split[qid] = f.stem
    return Dataset(d.name, catalog, queries, labels.qrels, 1.0 if threshold is None else threshold,
                   split, descriptions, encoding=_used(encoding))


ESCI_GRADES = {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0}
ESCI_EXAMPLES = "shopping_queries_dataset_examples.parquet"
ESCI_PRODUCTS = "shopping_queries_dataset_products.parquet"


def _read_parquet(path: Path, need: list[str]):
    import pandas as pd

    _need_file(path, f"the ESCI layout needs {ESCI_EXAMPLES} and {ESCI_PRODUCTS}")
    try:
        df = pd.read_parquet(path, columns=None)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}); "
                        "re-download it") from None
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise DataError(f"{path}: lacks columns {missing} (has {list(df.columns)}); "
                        "is this the Shopping Queries dataset file?")
    return df


def _str_ids(series, path: Path, column: str) -> list[str]:
    """A parquet column as stripped strings; an empty or missing value is a DataError
    that names the (0-based) row."""
    out = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip()
           for v in series.tolist()]
    for row, v in zip(series.index.tolist(), out):
        if not v:
            raise DataError(f"{path}: row {row} has an empty {column}; every row needs one")
    return out


def load_esci(path: str | os.PathLike, threshold: float | None = None,
              locale: str = "us", encoding: str | None = None) -> Dataset:
    """Amazon Shopping Queries (ESCI) parquet files. Grades E=3, S=2, C=1, I=0 (default
    threshold 3: Exact only). All examples of the locale are used (the large version).
    The file's ``split`` column gives train/test; dev is carved out of train by the
    sha1 rule (h == 1). Rows in errors are 0-based parquet row numbers. Parquet text is
    UTF-8: another ``encoding`` is refused."""
    d = Path(path)
    ex_path, pr_path = d / ESCI_EXAMPLES, d / ESCI_PRODUCTS
    if encoding is not None and encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise DataError(f"{ex_path}: parquet text is always UTF-8; drop --encoding {encoding}")
    ex = _read_parquet(ex_path, ["query_id", "query", "product_id", "product_locale",
                                 "esci_label", "split"])
    pr = _read_parquet(pr_path, ["product_id", "product_title", "product_locale"])
    locales = sorted(set(ex.product_locale.dropna().astype(str)))
    ex = ex[ex.product_locale == locale]
    pr = pr[pr.product_locale == locale]
    if ex.empty:
        raise DataError(f"{ex_path}: no examples with product_locale {locale!r}; locales "
                        f"present: {locales}; pass locale=one of them")
    catalog: dict[str, str] = {}
    descriptions: dict[str, str] = {}
    desc = (pr.product_description.fillna("").astype(str).tolist()
            if "product_description" in pr.columns else [""] * len(pr))
    for row, pid, title, text in zip(pr.index.tolist(), _str_ids(pr.product_id, pr_path, "product_id"),
                                     pr.product_title.fillna("").astype(str).tolist(), desc):
        if pid in catalog:
            raise DataError(f"{pr_path}: row {row} repeats product_id {pid!r} for locale "
                            f"{locale!r}; product ids must be unique per locale")
        catalog[pid] = title
        descriptions[pid] = text
    qids = _str_ids(ex.query_id, ex_path, "query_id")
    pids = _str_ids(ex.product_id, ex_path, "product_id")
    queries: dict[str, str] = {}
    split: dict[str, str] = {}
    file_split: dict[str, str] = {}
    labels = _Labels(catalog, queries, f"{pr_path} (locale {locale!r})", str(ex_path))
    for row, q, text, p, lab, s in zip(ex.index.tolist(), qids, ex["query"].astype(str).tolist(),
                                        pids, ex.esci_label.tolist(), ex.split.tolist()):
        where = f"{ex_path}: row {row}"
        _nonempty(text, where, "query")
        if lab not in ESCI_GRADES:
            raise DataError(f"{where}: esci_label {lab!r}; expected E, S, C or I")
        if s not in ("train", "test"):
            raise DataError(f"{where}: split {s!r}; expected train or test")
        if queries.setdefault(q, text) != text or file_split.setdefault(q, s) != s:
            raise DataError(f"{where}: query_id {q} has another query text or split than on "
                            "an earlier row; one query_id is one query in one split")
        split[q] = "test" if s == "test" else ("dev" if protocol_split(text) == "dev" else "train")
        labels.add(q, p, ESCI_GRADES[lab], where)
    return Dataset(f"esci-{locale}", catalog, queries, labels.qrels,
                   DEFAULT_THRESHOLD["esci"] if threshold is None else threshold, split,
                   descriptions, encoding="utf-8")


WANDS_GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}


def load_wands(path: str | os.PathLike, threshold: float | None = None,
               encoding: str | None = None) -> Dataset:
    """Wayfair WANDS: tab-separated ``product.csv`` (product_id, product_name, ...),
    ``query.csv`` (query_id, query, ...), ``label.csv`` (id, query_id, product_id,
    label); Exact=2, Partial=1, Irrelevant=0 (default threshold 2: Exact). WANDS has no
    split: queries are split by the sha1 rule."""
    d = Path(path)
    fix = "the WANDS layout needs tab-separated product.csv, query.csv and label.csv"
    prows = _read_tsv(d / "product.csv", ["product_id", "product_name"], fix, encoding)
    qrows = _read_tsv(d / "query.csv", ["query_id", "query"], fix, encoding)
    lrows = _read_tsv(d / "label.csv", ["id", "query_id", "product_id", "label"], fix, encoding)
    catalog = _unique(prows, "product_id", "product_name", d / "product.csv")
    descriptions = {r["product_id"]: r.get("product_description") or "" for _, r in prows}
    queries = _unique(qrows, "query_id", "query", d / "query.csv", required=True)
    labels = _Labels(catalog, queries, str(d / "product.csv"), str(d / "query.csv"))
    for line, r in lrows:
        where = f"{d / 'label.csv'}: line {line}"
        lab = (r["label"] or "").strip()
        if lab not in WANDS_GRADES:
            raise DataError(f"{where}: label {r['label']!r}; expected Exact, Partial or Irrelevant")
        labels.add(r["query_id"], r["product_id"], WANDS_GRADES[lab], where)
    return Dataset("wands", catalog, queries, labels.qrels,
                   DEFAULT_THRESHOLD["wands"] if threshold is None else threshold,
                   _split_all(queries), descriptions, encoding=_used(encoding))


def _read_plain_tsv(path: Path, ncols: int, fix: str,
                    encoding: str | None) -> list[tuple[int, list[str]]]:
    """Header-less tab-separated rows, as (line number, fields); the last field keeps
    any further tabs. The first field (an id) must be non-empty."""
    _need_file(path, fix)
    rows = []
    for i, line in enumerate(_read_text(path, encoding).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", ncols - 1)
        if len(parts) < ncols:
            raise DataError(f"{path}: line {i} has {len(parts)} tab-separated fields, "
                            f"expected {ncols}; fix or remove the line")
        if not parts[0].strip():
            raise DataError(f"{path}: line {i} has an empty id in the first field")
        rows.append((i, parts))
    return rows


def load_multicpr(path: str | os.PathLike, threshold: float | None = None,
                  encoding: str | None = None) -> Dataset:
    """Multi-CPR: ``corpus.tsv`` (pid, passage), ``train.query.txt`` / ``dev.query.txt``
    (qid, query), ``qrels.train.tsv`` / ``qrels.dev.tsv`` (qid, 0, pid, 1); no headers.
    Query ids are prefixed with their part (``train-…``, ``dev-…``). Train queries
    stay train; the published dev queries are halved into dev and test by the sha1 rule
    (h even -> dev, odd -> test) since Multi-CPR publishes no test labels. Default
    threshold 1."""
    d = Path(path)
    fix = "the Multi-CPR layout needs corpus.tsv, {train,dev}.query.txt and qrels.{train,dev}.tsv"
    catalog: dict[str, str] = {}
    first: dict[str, int] = {}
    for i, (pid, text) in _read_plain_tsv(d / "corpus.tsv", 2, fix, encoding):
        pid = pid.strip()
        if pid in catalog:
            raise DataError(f"{d / 'corpus.tsv'}: line {i} repeats pid {pid!r} (first on line "
                            f"{first[pid]}); ids must be unique")
        catalog[pid], first[pid] = text, i
    queries: dict[str, str] = {}
    split: dict[str, str] = {}
    labels = _Labels(catalog, queries, str(d / "corpus.tsv"), "")
    for part in ("train", "dev"):
        qfile = d / f"{part}.query.txt"
        if not qfile.exists():
            continue
        first = {}
        for i, (qid, text) in _read_plain_tsv(qfile, 2, fix, encoding):
            _nonempty(text, f"{qfile}: line {i}", "query")
            qid = f"{part}-{qid.strip()}"
            if qid in queries:
                raise DataError(f"{qfile}: line {i} repeats qid {qid[len(part) + 1:]!r} (first "
                                f"on line {first[qid]}); ids must be unique")
            queries[qid], first[qid] = text, i
            h = int(hashlib.sha1(text.strip().lower().encode("utf-8")).hexdigest(), 16)
            split[qid] = "train" if part == "train" else ("dev" if h % 2 == 0 else "test")
        labels.queries_src = str(qfile)
        rfile = d / f"qrels.{part}.tsv"
        for i, (qid, _, pid, grade) in _read_plain_tsv(rfile, 4, fix, encoding):
            where = f"{rfile}: line {i}"
            labels.add(f"{part}-{qid.strip()}", pid.strip(), _grade(grade.strip(), where), where)
    if not queries:
        raise DataError(f"{d}: neither train.query.txt nor dev.query.txt found; {fix}")
    return Dataset(d.name, catalog, queries, labels.qrels, 1.0 if threshold is None else threshold,
                   split, encoding=_used(encoding))


# ----------------------------------------------------------------------------- extra pairs

def with_extra_pairs(dataset: Dataset, path: str | os.PathLike) -> Dataset:
    """``dataset`` plus the (query, product) pairs of a TSV file as extra **train** labels.

    The file has a header with ``query`` (the query text) and ``product_id``, and
    optionally ``grade`` (empty or absent: the dataset's threshold, i.e. relevant); other
    columns (e.g. the provenance of ``genret synth``) are ignored. A query text of the
    dataset must be a train query; a new text becomes a new train query unless it equals
    a dev/test query up to case and surrounding spaces (the protocol's split key). Labels
    already in the dataset are never overwritten, and the first row for a pair wins.
    Query buckets of the original queries do not move.
    """
    path = Path(path)
    rows = _read_tsv(path, ["query", "product_id"], "the extra pairs need a tab-separated "
                     "header with query and product_id (optional grade)")
    by_text = {t: q for q, t in dataset.queries.items()}
    held_out = {t.strip().lower(): s for q, t in dataset.queries.items()
                if (s := dataset.query_split.get(q)) != "train"}
    queries, split = dict(dataset.queries), dict(dataset.query_split)
    qrels = {q: dict(r) for q, r in dataset.qrels.items()}
    for line, r in rows:
        where = f"{path}: line {line}"
        text, pid = r["query"], r["product_id"]
        if not text.strip():
            raise DataError(f"{where}: empty query; every row needs a query text")
        if pid not in dataset.catalog:
            raise DataError(f"{where}: product {pid!r} is not in the {dataset.name} catalog; "
                            "extra pairs must name products of the dataset they extend")
        qid = by_text.get(text)
        s = split.get(qid) if qid is not None else held_out.get(text.strip().lower())
        if s not in (None, "train"):
            raise DataError(f"{where}: query {text!r} belongs to the {s} split; extra pairs may "
                            "only add train labels (never leak into evaluation): remove the row")
        if qid is None:
            qid = by_text[text] = query_id(text)
            if qid in queries:
                raise DataError(f"{where}: query id {qid} of {text!r} is already used by "
                                f"{queries[qid]!r}; rename that query id")
            queries[qid], split[qid] = text, "train"
        grade = (_grade(r["grade"], where, "grade") if (r.get("grade") or "").strip()
                 else dataset.threshold)
        qrels.setdefault(qid, {}).setdefault(pid, grade)
    out = Dataset(dataset.name, dataset.catalog, queries, qrels, dataset.threshold, split,
                  dataset.descriptions, dataset.query_freq, dataset.encoding)
    if len(queries) == len(dataset.queries):
        out._buckets = dataset._buckets
    else:
        out._buckets = {**out.buckets(), **dataset.buckets()}
    return out


# ----------------------------------------------------------------------------- synthetic

_BRANDS = ["acme", "ryobi", "dewalt", "makita", "husky", "glacier", "behr", "moen", "delta",
           "kohler", "everbilt", "hampton", "lithonia", "cree", "philips", "ge", "rheem", "weber"]
_TYPES = ["drill", "saw", "hammer", "wrench", "faucet", "toilet", "sink", "shower head",
          "light bulb", "ceiling fan", "paint", "primer", "door knob", "hinge", "screw",
          "bolt", "ladder", "mower", "trimmer", "grill", "heater", "vanity", "mirror", "tile",
          "carpet", "blind", "shelf", "cabinet", "lock", "hose"]
_ATTRS = ["cordless", "brushed nickel", "white", "black", "stainless steel", "oak", "led",
          "20v", "18 in.", "3/4 in.", "outdoor", "indoor", "chrome", "bronze", "2-pack",
          "heavy duty", "energy star", "matte", "gloss", "36 in.", "galvanized", "copper"]


def synthetic_dataset(n_products: int = 400, n_queries: int = 300, seed: int = 0) -> Dataset:
    """A small generated catalog with queries and graded labels, for demos and tests.

    Titles combine a brand, attributes and a product type; a query takes some of a target
    product's words (sometimes a rare model code), labels grade the target 3, products
    sharing brand and type 2.5, products sharing only the type 1.5.
    """
    rng = np.random.default_rng(seed)
    catalog, parts = {}, []
    for i in range(n_products):
        brand, ptype = _BRANDS[rng.integers(len(_BRANDS))], _TYPES[rng.integers(len(_TYPES))]
        attrs = list(rng.choice(_ATTRS, size=rng.integers(1, 4), replace=False))
        code = f"m{rng.integers(100, 999)}{chr(97 + rng.integers(26))}"
        pid = f"p{i:05d}"
        catalog[pid] = " ".join([brand.title(), *attrs, ptype.title(), code.upper()])
        parts.append((brand, ptype, attrs, code))
    queries, qrels = {}, {}
    pids = list(catalog)
    for _ in range(n_queries):
        t = int(rng.integers(n_products))
        brand, ptype, attrs, code = parts[t]
        words = [ptype] + ([brand] if rng.random() < 0.6 else []) + \
                ([attrs[0]] if rng.random() < 0.5 else []) + ([code] if rng.random() < 0.15 else [])
        text = " ".join(rng.permutation(words).tolist())
        qid = query_id(text)
        queries[qid] = text
        rel = qrels.setdefault(qid, {})
        rel[pids[t]] = 3.0
        for j, (b, p, _, _) in enumerate(parts):
            if j != t and p == ptype:
                rel.setdefault(pids[j], 2.5 if b == brand else 1.5)
    return Dataset("synthetic", catalog, queries, qrels, 2.5, _split_all(queries))
