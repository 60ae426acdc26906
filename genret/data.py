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
import os
import re
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
    """

    name: str
    catalog: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, float]]
    threshold: float
    query_split: dict[str, str]
    descriptions: dict[str, str] = field(default_factory=dict)
    query_freq: dict[str, float] | None = None

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
            query_freq=self.query_freq,
        )
        sub._buckets = {q: b for q, b in self.buckets().items() if q in qset}
        return sub

    def summary(self) -> dict:
        return {"name": self.name, "products": len(self.catalog), "queries": len(self.queries),
                "threshold": self.threshold,
                **{f"{s}_queries": len(self.split(s)) for s in SPLITS}}


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


def load_dataset(path: str | os.PathLike | None = None, threshold: float | None = None) -> Dataset:
    """Load a dataset, choosing the format from what ``path`` holds.

    - ``*.csv`` / ``*.zip`` with Home Depot columns -> :func:`load_homedepot`
    - a directory with ``products.tsv`` -> :func:`load_tsv_dir`
    - a directory with ``corpus.jsonl`` -> :func:`load_beir`
    - a directory with ``shopping_queries_dataset_examples.parquet`` -> :func:`load_esci`
    - a directory with ``product.csv`` and ``label.csv`` -> :func:`load_wands`
    - a directory with ``corpus.tsv`` and ``*.query.txt`` -> :func:`load_multicpr`
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
        return load_homedepot(p, threshold)
    for marker, loader in (("products.tsv", load_tsv_dir), ("corpus.jsonl", load_beir),
                           ("shopping_queries_dataset_examples.parquet", load_esci),
                           ("label.csv", load_wands), ("corpus.tsv", load_multicpr)):
        if (p / marker).exists():
            return loader(p, threshold)
    raise DataError(f"{p}: not a known dataset layout; expected a Home Depot train.csv(.zip), "
                    "or a directory with products.tsv (TSV), corpus.jsonl (BEIR), "
                    "shopping_queries_dataset_examples.parquet (ESCI), label.csv (WANDS) "
                    "or corpus.tsv (Multi-CPR)")


def _split_all(queries: dict[str, str]) -> dict[str, str]:
    return {q: protocol_split(t) for q, t in queries.items()}


def _read_homedepot_text(path: Path) -> str:
    raw: bytes
    if path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as zf:
                members = [n for n in zf.namelist() if n.endswith(".csv")]
                if not members:
                    raise DataError(f"{path}: the zip holds no .csv member")
                raw = zf.read(members[0])
        except zipfile.BadZipFile as e:
            raise DataError(f"{path}: not a readable zip ({e}); re-download the file") from None
    else:
        raw = path.read_bytes()
    return raw.decode("latin-1")  # the competition file is latin-1; every byte decodes


def load_homedepot(path: str | os.PathLike, threshold: float | None = None) -> Dataset:
    """The Home Depot ``train.csv`` (or its zip): latin-1; first title variant per
    product_uid; one query per distinct ``search_term``."""
    path = Path(path)
    rows = csv.reader(io.StringIO(_read_homedepot_text(path)))
    header = next(rows, None)
    need = ["product_uid", "product_title", "search_term", "relevance"]
    if header is None or any(c not in header for c in need):
        raise DataError(f"{path}: expected columns {need} in the header, found {header}; "
                        "is this the Home Depot train.csv?")
    col = {c: header.index(c) for c in need}
    catalog: dict[str, str] = {}
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, float]] = {}
    for line_no, row in enumerate(rows, start=2):
        try:
            pid, title = row[col["product_uid"]].strip(), row[col["product_title"]]
            query, grade = row[col["search_term"]], float(row[col["relevance"]])
        except (IndexError, ValueError):
            raise DataError(f"{path}: row {line_no} is malformed ({row[:5]}); expected "
                            "product_uid, product_title, search_term and a numeric relevance")
        if not pid or not query:
            raise DataError(f"{path}: row {line_no} has an empty product_uid or search_term")
        catalog.setdefault(pid, title)
        qid = query_id(query)
        queries[qid] = query
        qrels.setdefault(qid, {})[pid] = grade
    if not catalog:
        raise DataError(f"{path}: no data rows")
    return Dataset("homedepot", catalog, queries, qrels,
                   DEFAULT_THRESHOLD["homedepot"] if threshold is None else threshold,
                   _split_all(queries))


def _read_tsv(path: Path, need: list[str]) -> list[dict[str, str]]:
    if not path.exists():
        raise DataError(f"{path}: missing; the TSV layout needs products.tsv, queries.tsv, qrels.tsv")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: line {line} is not valid UTF-8; re-save the file as UTF-8") from None
    reader = csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    if reader.fieldnames is None or any(c not in reader.fieldnames for c in need):
        raise DataError(f"{path}: expected header columns {need}, found {reader.fieldnames}")
    rows = list(reader)
    for i, r in enumerate(rows, start=2):
        if any(not (r.get(c) or "").strip() for c in need[:1]):
            raise DataError(f"{path}: line {i} has an empty {need[0]}")
    return rows


def _unique(rows: list[dict[str, str]], key: str, value: str, path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, r in enumerate(rows, start=2):
        k = r[key].strip()
        if k in out:
            raise DataError(f"{path}: line {i} repeats {key} {k!r}; ids must be unique")
        out[k] = r[value] or ""
    return out


def load_tsv_dir(path: str | os.PathLike, threshold: float | None = None) -> Dataset:
    """``products.tsv`` (product_id, title[, description]), ``queries.tsv`` (query_id,
    query[, split][, frequency]), ``qrels.tsv`` (query_id, product_id, relevance)."""
    d = Path(path)
    prows = _read_tsv(d / "products.tsv", ["product_id", "title"])
    qrows = _read_tsv(d / "queries.tsv", ["query_id", "query"])
    rrows = _read_tsv(d / "qrels.tsv", ["query_id", "product_id", "relevance"])
    catalog = _unique(prows, "product_id", "title", d / "products.tsv")
    descriptions = ({r["product_id"].strip(): r.get("description") or "" for r in prows}
                    if prows and "description" in prows[0] else {})
    queries = _unique(qrows, "query_id", "query", d / "queries.tsv")
    split = ({r["query_id"].strip(): r["split"].strip() for r in qrows}
             if qrows and "split" in qrows[0] else _split_all(queries))
    bad = [(q, s) for q, s in split.items() if s not in SPLITS]
    if bad:
        raise DataError(f"{d / 'queries.tsv'}: query {bad[0][0]!r} has split {bad[0][1]!r}; "
                        "use train, dev or test")
    freq = ({r["query_id"].strip(): float(r["frequency"] or 0) for r in qrows}
            if qrows and "frequency" in qrows[0] else None)
    qrels: dict[str, dict[str, float]] = {}
    for i, r in enumerate(rrows, start=2):
        try:
            grade = float(r["relevance"])
        except ValueError:
            raise DataError(f"{d / 'qrels.tsv'}: line {i} has relevance {r['relevance']!r}, "
                            "not a number") from None
        qrels.setdefault(r["query_id"].strip(), {})[r["product_id"].strip()] = grade
    return Dataset(d.name, catalog, queries, qrels, 1.0 if threshold is None else threshold,
                   split, descriptions, freq)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: missing")
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
    return out


def load_beir(path: str | os.PathLike, threshold: float | None = None) -> Dataset:
    """BEIR layout: ``corpus.jsonl`` (_id, title, text), ``queries.jsonl`` (_id, text),
    ``qrels/{train,dev,test}.tsv`` (query-id, corpus-id, score). The qrels file names
    the split; a query in none of them is split by the sha1 rule."""
    d = Path(path)
    catalog, descriptions, queries = {}, {}, {}
    for i, doc in enumerate(_read_jsonl(d / "corpus.jsonl"), start=1):
        if "_id" not in doc:
            raise DataError(f"{d / 'corpus.jsonl'}: line {i} has no _id")
        catalog[str(doc["_id"])] = doc.get("title") or doc.get("text", "")
        descriptions[str(doc["_id"])] = doc.get("text", "")
    for i, q in enumerate(_read_jsonl(d / "queries.jsonl"), start=1):
        if "_id" not in q or "text" not in q:
            raise DataError(f"{d / 'queries.jsonl'}: line {i} needs _id and text")
        queries[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, float]] = {}
    split = _split_all(queries)
    files = [f for f in ((d / "qrels" / f"{s}.tsv") for s in SPLITS) if f.exists()]
    if not files:
        raise DataError(f"{d / 'qrels'}: no train.tsv, dev.tsv or test.tsv")
    for f in files:
        for r in _read_tsv(f, ["query-id", "corpus-id", "score"]):
            qid = r["query-id"].strip()
            qrels.setdefault(qid, {})[r["corpus-id"].strip()] = float(r["score"])
            split[qid] = f.stem
    return Dataset(d.name, catalog, queries, qrels, 1.0 if threshold is None else threshold,
                   split, descriptions)


ESCI_GRADES = {"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0}


def load_esci(path: str | os.PathLike, threshold: float | None = None,
              locale: str = "us") -> Dataset:
    """Amazon Shopping Queries (ESCI) parquet files. Grades E=3, S=2, C=1, I=0 (default
    threshold 3: Exact only). The file's ``split`` column gives train/test; dev is
    carved out of train by the sha1 rule (h == 1)."""
    import pandas as pd

    d = Path(path)
    ex = pd.read_parquet(d / "shopping_queries_dataset_examples.parquet")
    pr = pd.read_parquet(d / "shopping_queries_dataset_products.parquet")
    need = {"query_id", "query", "product_id", "esci_label", "split", "product_locale"}
    if not need <= set(ex.columns):
        raise DataError(f"{d}: examples parquet lacks columns {sorted(need - set(ex.columns))}")
    ex = ex[ex.product_locale == locale]
    pr = pr[pr.product_locale == locale]
    catalog = dict(zip(pr.product_id.astype(str), pr.product_title.fillna("").astype(str)))
    queries, qrels, split = {}, {}, {}
    for q, text, p, lab, s in zip(ex.query_id.astype(str), ex["query"], ex.product_id.astype(str),
                                  ex.esci_label, ex.split):
        if lab not in ESCI_GRADES:
            raise DataError(f"{d}: unknown esci_label {lab!r} (expected E, S, C or I)")
        queries[q] = text
        qrels.setdefault(q, {})[p] = ESCI_GRADES[lab]
        split[q] = "test" if s == "test" else ("dev" if protocol_split(text) == "dev" else "train")
    return Dataset(f"esci-{locale}", catalog, queries, qrels,
                   DEFAULT_THRESHOLD["esci"] if threshold is None else threshold, split)


WANDS_GRADES = {"Exact": 2.0, "Partial": 1.0, "Irrelevant": 0.0}


def load_wands(path: str | os.PathLike, threshold: float | None = None) -> Dataset:
    """Wayfair WANDS: tab-separated ``product.csv`` (product_id, product_name, ...),
    ``query.csv`` (query_id, query, ...), ``label.csv`` (id, query_id, product_id,
    label); Exact=2, Partial=1, Irrelevant=0 (default threshold 2: Exact)."""
    d = Path(path)
    prows = _read_tsv(d / "product.csv", ["product_id", "product_name"])
    qrows = _read_tsv(d / "query.csv", ["query_id", "query"])
    lrows = _read_tsv(d / "label.csv", ["id", "query_id", "product_id", "label"])
    catalog = _unique(prows, "product_id", "product_name", d / "product.csv")
    descriptions = {r["product_id"].strip(): r.get("product_description") or "" for r in prows}
    queries = _unique(qrows, "query_id", "query", d / "query.csv")
    qrels: dict[str, dict[str, float]] = {}
    for i, r in enumerate(lrows, start=2):
        if r["label"] not in WANDS_GRADES:
            raise DataError(f"{d / 'label.csv'}: line {i} has label {r['label']!r}; "
                            "expected Exact, Partial or Irrelevant")
        qrels.setdefault(r["query_id"].strip(), {})[r["product_id"].strip()] = WANDS_GRADES[r["label"]]
    return Dataset("wands", catalog, queries, qrels,
                   DEFAULT_THRESHOLD["wands"] if threshold is None else threshold,
                   _split_all(queries), descriptions)


def _read_plain_tsv(path: Path, ncols: int) -> list[list[str]]:
    if not path.exists():
        raise DataError(f"{path}: missing")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < ncols:
            raise DataError(f"{path}: line {i} has {len(parts)} tab-separated fields, expected {ncols}")
        rows.append(parts)
    return rows


def load_multicpr(path: str | os.PathLike, threshold: float | None = None) -> Dataset:
    """Multi-CPR: ``corpus.tsv`` (pid, passage), ``train.query.txt`` / ``dev.query.txt``
    (qid, query), ``qrels.train.tsv`` / ``qrels.dev.tsv`` (qid, 0, pid, 1). Train queries
    stay train; the published dev queries are halved into dev and test by the sha1 rule
    (h even -> dev, odd -> test) since Multi-CPR publishes no test labels."""
    d = Path(path)
    catalog = {r[0].strip(): r[1] for r in _read_plain_tsv(d / "corpus.tsv", 2)}
    queries, qrels, split = {}, {}, {}
    for part in ("train", "dev"):
        qfile = d / f"{part}.query.txt"
        if not qfile.exists():
            continue
        for qid, text, *_ in _read_plain_tsv(qfile, 2):
            qid = f"{part}-{qid.strip()}"
            queries[qid] = text
            h = int(hashlib.sha1(text.strip().lower().encode()).hexdigest(), 16)
            split[qid] = "train" if part == "train" else ("dev" if h % 2 == 0 else "test")
        for qid, _, pid, grade, *_ in _read_plain_tsv(d / f"qrels.{part}.tsv", 4):
            qrels.setdefault(f"{part}-{qid.strip()}", {})[pid.strip()] = float(grade)
    if not queries:
        raise DataError(f"{d}: neither train.query.txt nor dev.query.txt found")
    return Dataset(d.name, catalog, queries, qrels, 1.0 if threshold is None else threshold, split)


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
