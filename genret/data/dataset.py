"""The dataset and the evaluation protocol: catalog, queries, graded qrels, the sha1
split, query buckets and fingerprints.

The protocol is the one of ``shared/data/homedepot/README.md``: one query per distinct
query string, relevant = grade >= threshold, split by ``sha1(query.strip().lower()) % 10``
(0 = test, 1 = dev, else train), and evaluated queries are those of the split with at
least one relevant product.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

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


def _split_all(queries: dict[str, str]) -> dict[str, str]:
    return {q: protocol_split(t) for q, t in queries.items()}
