"""Artifacts under fault injection: byte flips and truncation in every file of every kind,
killed and concurrent saves, and save paths that are a user's folder (issue 15)."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from genret.artifact import ArtifactError, check_output_dir, manifest_checksum, path_lock, sha256

QUERIES = ["cordless drill", "white paint", "pvc pipe", "door hinge"]


@pytest.fixture(scope="module")
def built(tmp_path_factory, synthetic):
    """One tiny artifact of each kind: BM25, an (untrained) multispan retriever with its
    FM-index, semantic IDs, the cached default backbone, a standalone FM-index."""
    from fm_index import FMIndex
    from genret.bm25 import BM25Retriever
    from genret.lexical import MultispanRetriever
    from semantic_id import SemanticIDConfig, build_from_embeddings

    d = tmp_path_factory.mktemp("artifacts")
    bm25 = BM25Retriever().fit(synthetic)
    bm25.save(d / "bm25")
    ms = MultispanRetriever(preset="tiny", num_beams=2)  # no training: only its files matter here
    ms.catalog = synthetic.catalog_fingerprint()
    ms._load_start(synthetic)
    ms._setup_catalog(synthetic)
    ms.info["stage"] = "sft"
    ms.save(d / "multispan")
    x = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    build_from_embeddings([f"p{i}" for i in range(60)], x,
                          SemanticIDConfig(levels=2, codebook=4, kmeans_iters=5)).save(d / "sid")
    FMIndex.build([[3, 1, 4, 1, 5], [9, 2, 6], [5, 3, 5]], sa_sample_rate=2).save(d / "fm")
    return {"dir": d, "bm25": bm25, "backbone": Path(ms.info["backbone"])}


def _load(kind, path, synthetic):
    from fm_index import FMIndex
    from genret.backbone import default_backbone
    from genret.retriever import load_retriever
    from semantic_id import SemanticIDs

    if kind == "backbone":  # a copy of the cache: <root>/backbones/<key>
        return default_backbone(synthetic, "tiny", cache_dir=path.parent.parent)
    if kind == "sid":
        return SemanticIDs.load(path)
    if kind == "fm":
        return FMIndex.load(path)
    return load_retriever(path)


def _copy(built, kind, tmp_path) -> Path:
    if kind == "backbone":
        src, dst = built["backbone"], tmp_path / "cache" / "backbones" / built["backbone"].name
    else:
        src, dst = built["dir"] / kind, tmp_path / kind
    shutil.copytree(src, dst)
    return dst


def _damage(f: Path, how: str) -> None:
    data = f.read_bytes()
    if how == "flip":
        mid = len(data) // 2
        f.write_bytes(data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:])
    else:
        f.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("kind", ["bm25", "multispan", "sid", "backbone", "fm"])
def test_every_damaged_file_is_refused(built, synthetic, tmp_path, kind):
    """Flip a byte in, or truncate, each file of the artifact (.safetensors, .npy, .json,
    tokenizer.json, the manifests): every load fails with one line naming the file and
    saying how to rebuild it."""
    path = _copy(built, kind, tmp_path)
    _load(kind, path, synthetic)  # intact: loads
    files = sorted(f.relative_to(path) for f in path.rglob("*") if f.is_file())
    assert {".json", ".safetensors" if kind == "backbone" else ".npy"} <= {f.suffix for f in files}
    if kind in ("multispan", "backbone"):
        assert {"model.safetensors", "tokenizer.json"} <= {f.name for f in files}
    for rel in files:
        for how in ("flip", "truncate"):
            f = path / rel
            data = f.read_bytes()
            _damage(f, how)
            with pytest.raises(ValueError) as err:
                _load(kind, path, synthetic)
            msg = str(err.value)
            assert rel.name in msg and ("rebuild" in msg or "delete" in msg), (rel, how, msg)
            assert "\n" not in msg, msg
            f.write_bytes(data)
    _load(kind, path, synthetic)  # restored: loads again


def _resign(path: Path) -> None:
    """Make the manifest agree with the files again (as an artifact written by a
    broken or incompatible writer would)."""
    mf = path / "manifest.json"
    m = json.loads(mf.read_text())
    m["files"] = {n: {"bytes": (path / n).stat().st_size, "sha256": sha256(path / n)} for n in m["files"]}
    m["manifest_sha256"] = manifest_checksum(m)
    mf.write_text(json.dumps(m))


@pytest.mark.parametrize("kind, name, garbage", [
    ("bm25", "product_ids.json", b"\xff\xfe not json"),
    ("bm25", "bm25s/params.index.json", b"{"),
    ("multispan", "model/model.safetensors", b"\x00" * 64),
    ("multispan", "title_lengths.npy", b"\x93NUMPY broken"),
])
def test_library_errors_after_the_checksum_become_one_line(built, synthetic, tmp_path, kind, name, garbage):
    path = _copy(built, kind, tmp_path)
    assert (path / name).is_file()
    (path / name).write_bytes(garbage)
    _resign(path)
    with pytest.raises(ValueError, match="cannot be loaded .*rebuild it") as err:
        _load(kind, path, synthetic)
    assert "\n" not in str(err.value)


def test_an_edited_manifest_is_refused(built, synthetic, tmp_path):
    path = _copy(built, "bm25", tmp_path)
    m = json.loads((path / "manifest.json").read_text())
    m["config"]["k1"] = 2.0  # valid JSON, another model
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match="manifest.json: checksum mismatch.*rebuild"):
        _load("bm25", path, synthetic)


# ----------------------------------------------------------------------------- save paths

def _user_folder(d: Path) -> Path:
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "data.csv").write_text("1,2")
    return d


def test_a_users_folder_is_never_replaced(built, synthetic, tmp_path):
    from fm_index import FMIndex
    from genret.backbone import load_backbone, pretrain, save_backbone
    from semantic_id import SemanticIDs

    d = _user_folder(tmp_path / "mine")
    model, tok = load_backbone(built["backbone"])
    saves = [lambda: built["bm25"].save(d), lambda: built["bm25"].save(d, overwrite=True),
             lambda: SemanticIDs.load(built["dir"] / "sid").save(d),
             lambda: FMIndex.load(built["dir"] / "fm").save(d, overwrite=True),
             lambda: save_backbone(model, tok, d), lambda: pretrain(synthetic, d, "tiny")]
    for save in saves:
        with pytest.raises((ArtifactError, FileExistsError), match="non-empty folder that is not a genret"):
            save()
    assert (d / "notes.txt").read_text() == "my notes" and (d / "sub" / "data.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temp or lock files left


def test_output_dir_policy(built, tmp_path):
    from fm_index import FMIndex

    assert check_output_dir(tmp_path / "new", "bm25") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    check_output_dir(tmp_path / "empty", "bm25")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ArtifactError, match="is a file"):
        check_output_dir(tmp_path / "file", "bm25")
    with pytest.raises(ArtifactError, match="holds a genret fm_index artifact, not bm25.*--overwrite"):
        check_output_dir(built["dir"] / "fm", "bm25")
    check_output_dir(built["dir"] / "fm", "bm25", overwrite=True)
    check_output_dir(built["dir"] / "bm25", "bm25")  # the same kind is replaced

    other = _copy(built, "fm", tmp_path)  # another kind: only with overwrite
    with pytest.raises(ArtifactError, match="not bm25"):
        built["bm25"].save(other)
    assert FMIndex.load(other).count([5]) == 3
    built["bm25"].save(other, overwrite=True)
    idx = _copy(built, "bm25", tmp_path / "x")
    with pytest.raises(FileExistsError, match="not an FM index"):
        FMIndex.load(built["dir"] / "fm").save(idx)


def _same_run(a, b) -> bool:
    qs = dict(enumerate(QUERIES))
    ra, rb = a.search(qs, 20), b.search(qs, 20)
    return all(ra[q].ids == rb[q].ids for q in qs)


def test_a_failed_or_killed_save_leaves_the_old_artifact(built, tmp_path):
    from genret.artifact import atomic_dir
    from genret.bm25 import BM25Retriever

    path = _copy(built, "bm25", tmp_path)
    with pytest.raises(RuntimeError):
        with atomic_dir(path, "bm25", 1) as tmp:
            (tmp / "half.npy").write_bytes(b"x")
            raise RuntimeError("disk on fire")
    assert _same_run(BM25Retriever.load(path), built["bm25"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]

    kill = textwrap.dedent(f"""
        import os
        from genret.artifact import atomic_dir
        with atomic_dir({str(path)!r}, "bm25", 1) as tmp:
            (tmp / "half.npy").write_bytes(b"x")
            os.kill(os.getpid(), 9)
    """)
    assert subprocess.run([sys.executable, "-c", kill]).returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "bm25")
    assert any(n.startswith(".bm25.genret-tmp-") for n in left), left
    assert _same_run(BM25Retriever.load(path), built["bm25"])
    built["bm25"].save(path)  # the next save cleans up what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25"]
    assert _same_run(BM25Retriever.load(path), built["bm25"])


def test_a_second_saver_gets_a_clear_error(built, tmp_path):
    from fm_index import FMIndex
    from genret.bm25 import BM25Retriever

    path = _copy(built, "bm25", tmp_path)
    hold = textwrap.dedent(f"""
        import sys
        from genret.artifact import atomic_dir
        with atomic_dir({str(path)!r}, "bm25", 1) as tmp:
            print("saving", flush=True)
            sys.stdin.readline()
            raise SystemExit(3)  # abandon the save
    """)
    other = subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert other.stdout.readline().strip() == "saving"
        with pytest.raises(ArtifactError, match=f"another process is saving {path}; wait for it"):
            built["bm25"].save(path)
    finally:
        other.communicate("go\n", timeout=60)
    assert other.returncode == 3
    assert _same_run(BM25Retriever.load(path), built["bm25"])
    with path_lock(tmp_path / "fm"):  # fm_index takes the same lock
        with pytest.raises(BlockingIOError, match="another process is saving"):
            FMIndex.load(built["dir"] / "fm").save(tmp_path / "fm")
    FMIndex.load(built["dir"] / "fm").save(tmp_path / "fm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bm25", "fm"]
