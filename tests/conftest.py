import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from genret.data import default_data_path, synthetic_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pretrained tiny backbones are shared by the tests of one session, not left in the repo
os.environ.setdefault("GENRET_CACHE", tempfile.mkdtemp(prefix="genret-test-cache-"))


@pytest.fixture(scope="session")
def homedepot():
    """The real Home Depot dataset; tests needing it skip (saying why) when it is absent."""
    from genret.data import load_dataset

    path = default_data_path()
    if path is None or not Path(path).exists():
        pytest.skip("Home Depot data not found: set GENRET_DATA or put it in ../shared/data/homedepot/")
    return load_dataset(path)


@pytest.fixture(scope="session")
def synthetic():
    return synthetic_dataset()


def write_tsv_dataset(ds, d: Path) -> Path:
    """Write a Dataset in the TSV directory layout."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "products.tsv").write_text("product_id\ttitle\n" + "".join(
        f"{p}\t{t}\n" for p, t in ds.catalog.items()))
    (d / "queries.tsv").write_text("query_id\tquery\tsplit\n" + "".join(
        f"{q}\t{t}\t{ds.query_split[q]}\n" for q, t in ds.queries.items()))
    (d / "qrels.tsv").write_text("query_id\tproduct_id\trelevance\n" + "".join(
        f"{q}\t{p}\t{g}\n" for q, rel in ds.qrels.items() for p, g in rel.items()))
    return d


@pytest.fixture
def foreign_tokenizer_copy(tmp_path):
    """A copy of a saved generative retriever whose manifest names another tokenizer."""
    def make(path: Path) -> Path:
        bad = tmp_path / "foreign-tokenizer"
        shutil.copytree(path, bad)
        m = json.loads((bad / "manifest.json").read_text())
        m["tokenizer"] = "sha256:0000000000000000"
        (bad / "manifest.json").write_text(json.dumps(m))
        return bad
    return make


@pytest.fixture
def synthetic_dir(tmp_path, synthetic):
    return write_tsv_dataset(synthetic, tmp_path / "synthetic")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A 2-layer random-init MiniLM-form prefix-LM with MiniLM's tokenizer, saved as a
    genret backbone (tests/tiny.py: tiny_minilm)."""
    from tiny import tiny_minilm

    from genret.backbone import save_backbone
    from genret.minilm import minilm_tokenizer

    tok = minilm_tokenizer()
    return save_backbone(tiny_minilm(tok), tok, tmp_path_factory.mktemp("bb") / "tiny-minilm")
