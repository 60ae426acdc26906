"""Amazon Shopping Queries (ESCI): the examples and products parquet files."""

from __future__ import annotations

import math
import os
from pathlib import Path

from .dataset import DEFAULT_THRESHOLD, Dataset, DataError, protocol_split
from .files import _Labels, _need_file, _nonempty


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
