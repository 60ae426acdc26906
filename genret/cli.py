"""The ``genret`` command line."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from .artifact import ArtifactError, check_output_dir
from .data import BUCKETS, DataError, load_dataset, with_extra_pairs
from .eval import DEFAULT_METRICS, evaluate


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like genret's other errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _finite_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value!r}")
    return x


def _add_data(p: argparse.ArgumentParser, threshold: bool = True) -> None:
    p.add_argument("--data", help="dataset file or directory (default: $GENRET_DATA, else "
                                  "../shared/data/homedepot/train.csv.zip)")
    p.add_argument("--encoding", help="encoding of the data files (default: UTF-8; the Home Depot "
                                      "CSV falls back to latin-1 when it is no valid UTF-8)")
    if threshold:
        p.add_argument("--threshold", type=_finite_float,
                       help="relevance threshold (default: the dataset's)")


def _load_data(args):
    return load_dataset(args.data, getattr(args, "threshold", None), args.encoding)


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing genret artifact of another kind at --out")


def _load_model(args, ds=None):
    """The saved retriever of ``--model``: of the kind ``--retriever`` names (when given),
    fitted on the catalog of ``ds`` (when given)."""
    from .retriever import load_retriever

    retriever = load_retriever(args.model, getattr(args, "retriever", None))
    if ds is not None:
        retriever.check_catalog(ds, where=f"the model at {args.model}", model=args.model, data=args.data)
    return retriever


def cmd_index(args) -> int:
    from .artifact import read_manifest

    kind = read_manifest(args.model, verify=False).get("kind")  # --out is checked before any loading
    check_output_dir(args.out, kind, args.overwrite)
    retriever = _load_model(args)
    ds = _load_data(args)
    t0 = time.perf_counter()
    retriever.reindex(ds, progress=not args.quiet)
    retriever.save(args.out, overwrite=args.overwrite)
    n = retriever.reindexed
    print(f"{kind} model {args.model} re-indexed on {ds.name} ({len(ds.catalog)} products: {n['added']} added, "
          f"{n['removed']} removed, {n['kept']} kept; no retraining) in {time.perf_counter() - t0:.0f} s "
          f"and saved to {args.out}; evaluate: genret eval --model {args.out}"
          + (f" --data {args.data}" if args.data else ""))
    return 0


def cmd_eval(args) -> int:
    from .retriever import make_retriever

    if not (args.model or args.retriever):
        raise ValueError("give --retriever NAME (fitted here) or --model DIR (a saved retriever)")
    ds = _load_data(args)
    qids = ds.split(args.split)
    t0 = time.perf_counter()
    retriever = (_load_model(args, ds) if args.model
                 else make_retriever(args.retriever).fit(ds, progress=not args.json))
    name = args.retriever or retriever.kind
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = retriever.search({q: ds.queries[q] for q in qids}, args.k, progress=not args.json)
    search_s = time.perf_counter() - t0
    res = evaluate(run, ds, qids)
    if args.json:
        print(json.dumps({"retriever": name, **({"model": args.model} if args.model else {}),
                          "split": args.split, **res["overall"],
                          "buckets": res["buckets"], "fit_seconds": fit_s,
                          "ms_per_query": 1000 * search_s / len(qids)}))
        return 0
    ms = DEFAULT_METRICS
    label = f"{name} ({args.model})" if args.model else name
    print(f"{label} on {ds.name} {args.split} ({len(qids)} queries, "
          f"{len(ds.catalog)} products; fit {fit_s:.1f}s, {1000 * search_s / len(qids):.1f} ms/query)")
    print("| bucket | n | " + " | ".join(ms) + " |")
    print("|---" * (len(ms) + 2) + "|")
    for name, m in [("all", res["overall"])] + [(b, res["buckets"][b]) for b in BUCKETS]:
        print(f"| {name} | {m['n_queries']} | " + " | ".join(f"{m[x]:.4f}" for x in ms) + " |")
    return 0


def cmd_compare(args) -> int:
    from .data import synthetic_dataset
    from .harness import CompareConfig, claim_results_dir, compare

    cfg = CompareConfig.from_yaml(args.config)
    if args.only:
        cfg = cfg.only([n.strip() for n in args.only.split(",") if n.strip()])
    cfg.data = args.data or cfg.data
    claim_results_dir(args.out)  # a busy or user-owned --out fails before the data loads
    try:
        ds = load_dataset(cfg.data, args.threshold, args.encoding)
    except DataError:
        if cfg.data:
            raise
        print("genret: the Home Depot data is not here (put train.csv.zip in "
              "../shared/data/homedepot/ or set GENRET_DATA); showing the pipeline on a "
              "small generated catalog instead.", file=sys.stderr)
        ds = synthetic_dataset()
    out = Path(args.out)
    compare(cfg, ds, out, resume=args.resume)
    print((out / "table.md").read_text())
    print(f"results written to {out}/ (metrics.json, table.md, table.csv, runs/, *.png)")
    return 0


def cmd_report(args) -> int:
    from .harness import report

    if args.data and args.threshold is None:  # the threshold the comparison ran with
        try:
            args.threshold = json.loads((Path(args.dir) / "metrics.json").read_text())["meta"]["dataset"]["threshold"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # report() says what is wrong with the directory
    ds = _load_data(args) if args.data else None
    print(report(args.dir, ds))
    print(f"re-rendered {args.dir}/ (metrics.json, table.md, table.csv, *.png) from its runs/")
    return 0


def cmd_pretrain(args) -> int:
    from .backbone import KIND, backbone_info, get_preset, pretrain

    preset = get_preset(args.preset)  # fail on a bad preset or --out before loading any data
    check_output_dir(args.out, KIND, args.overwrite)
    ds = _load_data(args)
    out = pretrain(ds, args.out, preset=preset, seed=args.seed, progress=not args.quiet,
                   overwrite=args.overwrite)
    info = backbone_info(out)
    print(f"backbone ({info['preset']}) written to {out}: {info['n_params']:,} parameters, "
          f"vocab {info['vocab_size']}, {info['n_titles']} titles + {info['n_queries']} train queries "
          f"({info['n_tokens']:,} tokens), {info['train_seconds']:.0f} s, "
          f"loss {info['first_loss']} -> {info['final_loss']}")
    return 0


TRAIN_MODES = {"multispan": "gr-multispan-{stage}", "semantic-id": "gr-sid", "splade": "splade",
               "prosper": "prosper", "dense": "dense"}


def parse_overrides(items: list[str]) -> dict:
    """``key=value`` pairs (values parsed as YAML; ``train.epochs=2`` nests) -> a dict."""
    import yaml

    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. --set num_beams=20")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def cmd_train(args) -> int:
    from .retriever import make_retriever

    name = TRAIN_MODES[args.mode].format(stage=args.stage)
    params = parse_overrides(args.set)
    if args.backbone and args.preset:
        raise ValueError("--backbone and --preset both given: --preset picks genret's embedded LM of "
                         "that size, --backbone another model; give one of them")
    if args.backbone or args.preset:
        if args.mode == "dense":
            raise ValueError("--backbone/--preset apply to the LM channels; the dense encoder is "
                             "set with --set encoder=PATH")
        params.update({k: v for k, v in (("backbone", args.backbone), ("preset", args.preset)) if v})
    if args.mode in ("multispan", "semantic-id"):
        params.update(stage=args.stage, init=args.init)
        if args.full:
            params.setdefault("train", {})["full"] = True
        if args.sid:
            params["sid"] = args.sid
    elif args.stage != "sft" or args.init or args.sid:
        raise ValueError(f"--stage/--init/--sid apply to the generative modes, not {args.mode!r}")
    if args.mode == "semantic-id" and not (args.sid or args.init):
        raise ValueError("--mode semantic-id needs --sid DIR (from `genret sid build`) or --init DIR")
    retriever = make_retriever(name, **params)  # fail on a bad setting or --out before loading data
    check_output_dir(args.out, retriever.kind, args.overwrite)
    ds = _load_data(args)
    if args.extra_pairs:
        n = sum(map(len, ds.qrels.values()))
        ds = with_extra_pairs(ds, args.extra_pairs)
        print(f"extra pairs: {sum(map(len, ds.qrels.values())) - n} train labels added from "
              f"{args.extra_pairs}", file=sys.stderr)
    t0 = time.perf_counter()
    work = Path(args.out).with_name(f".{Path(args.out).name}.work")
    retriever.fit(ds, out_dir=str(work), progress=not args.quiet)
    from accelerate import PartialState

    state = PartialState()  # under `accelerate launch` every process trains; one saves
    if state.is_main_process:
        retriever.save(args.out, overwrite=args.overwrite)
    state.wait_for_everyone()
    print(f"{name} trained in {time.perf_counter() - t0:.0f} s and saved to {args.out}; "
          f"evaluate: genret eval --model {args.out} --split dev")
    return 0


def cmd_synth(args) -> int:
    from .retriever import check_settings
    from .synth import SynthConfig, synth_config, synthesize

    params = check_settings(SynthConfig, parse_overrides(args.set), "synth")
    for key in ("queries", "candidates", "preset", "backbone", "channels", "decoding",
                "dpo_queries", "seed"):
        if getattr(args, key) is not None:
            params[key] = getattr(args, key)
    if args.full:
        params.setdefault("train", {})["full"] = True
    cfg = synth_config(**params)  # fail on a bad option before loading any data
    ds = _load_data(args)
    rep = synthesize(ds, cfg, args.out, progress=not args.quiet)
    c, s = rep["counts"], rep["shift"]
    print(f"{c['pairs_kept']} pairs for {c['queries_with_pairs']} of {c['queries']} train queries "
          f"from {c['candidates']} rewrites (mean reward {rep['rewards']['combined'].get('mean', 0):.3f}; "
          f"{c['filtered_labelled']} already labelled, {c['filtered_disagreement']} without channel "
          f"agreement); rewrite length {s['synthetic_length_mean']:.1f} vs real "
          f"{s['real_length_mean']:.1f} words, vocabulary overlap {s['vocab_overlap']:.3f}")
    print(f"written to {args.out} (pairs.tsv, candidates.tsv, report.json, synth.png); use: "
          f"genret train --mode dense --extra-pairs {Path(args.out) / 'pairs.tsv'} --out DIR")
    return 0


def read_queries(path: str) -> list[tuple[str, str]]:
    """(id, text) of a query file: TSV ``id<TAB>text`` lines, or one query per line (id = its
    line number); which one is decided by the first non-blank line. Blank lines are skipped;
    any other bad line is refused naming ``file:line``."""
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise ValueError(f"cannot read the query file {path}: {e.strerror}") from None
    out, seen, tsv = [], set(), None
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{n}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
        if not line.strip():
            continue
        if tsv is None:
            tsv = "\t" in line
        if tsv:
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise ValueError(f"{path}:{n}: expected 'id<TAB>query text' (as on the first line), got {line!r}")
            qid, text = parts[0].strip(), parts[1].strip()
            if any(c.isspace() for c in qid):
                raise ValueError(f"{path}:{n}: query id {qid!r} holds whitespace, which a TREC run cannot hold")
        elif "\t" in line:
            raise ValueError(f"{path}:{n}: a tab in a one-query-per-line file (the first line has none); "
                             "use 'id<TAB>text' on every line or no tabs at all")
        else:
            qid, text = str(n), line.strip()
        if qid in seen:
            raise ValueError(f"{path}:{n}: query id {qid!r} appears twice; ids must be unique")
        seen.add(qid)
        out.append((qid, text))
    if not out:
        raise ValueError(f"{path} holds no queries; give one query per line or 'id<TAB>text' lines")
    return out


def check_run_out(args) -> Path | None:
    """``--out`` of ``search --queries``: a run file path that is free (or ``--overwrite``)."""
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise ValueError(f"{out} is a directory; --out names a run file")
    if out is not None and out.exists() and not args.overwrite:
        raise ValueError(f"{out} already exists; choose another --out, or pass --overwrite to replace it")
    return out


def search_file(retriever, queries: list[tuple[str, str]], out: Path | None, args) -> int:
    """``search --queries``: the queries in batches of ``--batch``, a progress bar, and a TREC
    run to ``out`` (written whole or not at all) or streamed to stdout."""
    from tqdm.auto import tqdm

    from .eval import Run

    k = args.k or 1000
    run = Run()
    with tqdm(total=len(queries), desc="search", unit="q", disable=args.quiet) as bar:
        for i in range(0, len(queries), args.batch):
            part = retriever.search(dict(queries[i:i + args.batch]), k)
            if out is None:  # stream: each batch as soon as it is searched
                sys.stdout.writelines(f"{qid} Q0 {pid} {rank} {score:.6g} {retriever.kind}\n"
                                      for qid, _ in queries[i:i + args.batch]
                                      for rank, (pid, score) in enumerate(zip(part[qid].ids, part[qid].scores), 1))
                sys.stdout.flush()
            else:
                run.update(part)
            bar.update(len(part))
    if out is not None:
        run.write_trec(out, tag=retriever.kind)
        print(f"{len(queries)} queries, top {k} each: TREC run written to {out}", file=sys.stderr)
    return 0


def cmd_search(args) -> int:
    if bool(args.query) == bool(args.queries):
        raise ValueError("give either query words or --queries FILE (not both)")
    if args.queries:  # the file and --out are checked before the model loads
        out, queries = check_run_out(args), read_queries(args.queries)
        return search_file(_load_model(args, _load_data(args) if args.data else None), queries, out, args)
    retriever = _load_model(args, _load_data(args) if args.data else None)
    query = " ".join(args.query)
    detail = retriever.explain(query, args.k or 10)
    if args.json:
        print(json.dumps(detail, indent=2))
        return 0
    for key in ("beams", "spans", "ids", "terms"):
        if key in detail:
            print(f"{key}:")
            items = detail[key].items() if isinstance(detail[key], dict) else detail[key]
            for item in items:
                print(f"  {item}")
    print("products:")
    for rank, p in enumerate(detail["products"], start=1):
        print(f"  {rank:3d}. {p['score']:8.3f}  {p['id']}  {p.get('title', '')}")
    return 0


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535 (0: any free one), got {value!r}")
    return int(value)


def cmd_serve(args) -> int:
    from .serve import listen, load_channels, serve

    with listen(args.host, args.port) as sock:  # a busy port fails before the models load
        ds = _load_data(args) if args.data else None
        channels = load_channels(args.model, ds, args.data, args.batch_ms, args.max_batch)
        return serve(sock, channels, ds, args.access_log)


def _sid_table(rep: dict) -> str:
    lines = [f"{rep['n_items']} items, {rep['quantizer']} {rep['levels_x_codebook'][0]}x"
             f"{rep['levels_x_codebook'][1]}, prune {rep['prune']}"
             + (f" (level {rep['pruned_level']})" if rep.get("pruned_level") else "")
             + f"; collision rate {rep['collision_rate']:.4f} (after pruning "
             f"{rep['collision_rate_after_pruning']:.4f}); mean ID length {rep['mean_length']:.2f} "
             f"(max {rep['max_length']}); dominant level {rep['dominant_level']}",
             "| level | entropy | gini | top1_share | top10_share | utilization |",
             "|---|---|---|---|---|---|"]
    for lv in rep["levels"]:
        lines.append(f"| {lv['level']} | {lv['entropy']:.4f} | {lv['gini']:.4f} | {lv['top1_share']:.4f} "
                     f"| {lv['top10_share']:.4f} | {lv['utilization']:.4f} |")
    return "\n".join(lines)


def cmd_sid(args) -> int:
    from semantic_id import SemanticIDError, SemanticIDs
    from semantic_id.core import KIND

    try:
        if args.sid_command == "build":
            from .semantic import build_ids

            check_output_dir(args.out, KIND, args.overwrite)
            ds = _load_data(args)
            sids = build_ids(ds, args.quantizer, args.levels, args.codebook, args.prune, args.top_k,
                             args.encoder, args.seed, progress=not args.quiet)
            sids.save(args.out, overwrite=args.overwrite)
            sids.plot(Path(args.out) / "sandglass.png")
            print(_sid_table(sids.report()))
            print(f"semantic IDs written to {args.out} (plot: {Path(args.out) / 'sandglass.png'}); "
                  f"train: genret train --mode semantic-id --sid {args.out} --out DIR")
            return 0
        rep = SemanticIDs.load(args.dir).report()
    except SemanticIDError as e:
        raise ValueError(str(e)) from None
    print(json.dumps(rep) if args.json else _sid_table(rep))
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="genret", description="generative retrieval for product search")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="evaluate one retriever on a split")
    _add_data(p)
    p.add_argument("--retriever", help="registry name, e.g. bm25, bm25-stem (with --model: optional, "
                                        "and it must name the saved model's kind)")
    p.add_argument("--model", help="a saved retriever directory (skips fitting; it must have been "
                                   "fitted on this data's catalog)")
    p.add_argument("--split", default="test", choices=["train", "dev", "test", "all"])
    p.add_argument("--k", type=_positive_int, default=1000, help="products retrieved per query (>= 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("compare", help="run the retrievers of a YAML config and tabulate")
    p.add_argument("--config", required=True)
    _add_data(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="reuse the saved runs of rows whose config is unchanged (e.g. after adding a row "
                        "or a crash); re-run the others")
    p.add_argument("--only", metavar="ROW,ROW", help="run only these rows of the config (and the fusions "
                   "of them); with --resume a later run reuses them")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="re-render a finished comparison from its saved runs (no retraining)")
    p.add_argument("dir", help="the --out directory of a `genret compare` run")
    _add_data(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("pretrain", help="train the embedded backbone (BPE tokenizer + small Qwen2 LM) "
                                        "on the catalog titles and train queries")
    _add_data(p)
    p.add_argument("--out", required=True, help="output directory (an HF model directory)")
    _add_overwrite(p)
    p.add_argument("--preset", default="small", help="tiny (tests, seconds) or small (default, results)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="train a retriever and save it to a directory")
    p.add_argument("--mode", required=True, choices=sorted(TRAIN_MODES))
    _add_data(p)
    p.add_argument("--out", required=True, help="output directory (the saved retriever)")
    _add_overwrite(p)
    p.add_argument("--stage", default="sft", choices=["sft", "dpo"],
                   help="generative modes: sft, or dpo (on --init, or after an SFT pass)")
    p.add_argument("--init", help="start from a saved generative retriever (e.g. the SFT one)")
    p.add_argument("--backbone", help="HF model name or path, minilm, or embedded (default: the "
                                      "packaged MiniLM)")
    p.add_argument("--preset", help="train on genret's embedded LM of this size: tiny or small")
    p.add_argument("--sid", help="semantic-ID directory from `genret sid build`")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any config field, e.g. --set num_beams=20 --set train.epochs=2; any trl "
                        "SFTConfig/DPOConfig argument as train.trainer.NAME, e.g. --set "
                        "train.trainer.lr_scheduler_type=linear (docs/training.md)")
    p.add_argument("--extra-pairs", metavar="FILE",
                   help="TSV of extra train labels (query, product_id[, grade]), e.g. the "
                        "pairs.tsv of `genret synth`")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("synth", help="long-tail data synthesis: rewrite train queries with a "
                                     "reward-trained LM, keep (query, product) pairs the "
                                     "channels agree on")
    _add_data(p)
    p.add_argument("--out", required=True, help="output directory (pairs.tsv, report.json, ...)")
    p.add_argument("--queries", type=int, help="train queries to rewrite, tail first (default 200)")
    p.add_argument("--candidates", type=int, help="rewrites per query (default 8)")
    p.add_argument("--preset", help="size of the embedded backbone: tiny or small (default)")
    p.add_argument("--backbone", help="the rewriter's LM: HF causal LM name or path, minilm (the packaged "
                   "MiniLM prefix-LM) or embedded (default: the embedded one of --preset)")
    p.add_argument("--channels", help="comma-separated registry names or saved retriever "
                                      "directories (default bm25-stem,dense-zeroshot)")
    p.add_argument("--decoding", choices=["sample", "beam"], help="sampling (default) or beams")
    p.add_argument("--dpo-queries", type=int, help="train queries mined for DPO pairs (0: no DPO)")
    p.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    p.add_argument("--seed", type=int)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="any SynthConfig field, e.g. --set min_agree=1 --set train.max_steps=50")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("search", help="search with a saved retriever and show why, or run a query file")
    p.add_argument("--model", required=True, help="a saved retriever directory")
    p.add_argument("query", nargs="*", help="query words (or --queries FILE)")
    _add_data(p, threshold=False)
    p.add_argument("--k", type=_positive_int, help="products per query (default 10; with --queries 1000)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--queries", metavar="FILE", help="a query file: 'id<TAB>text' lines or one query per line")
    p.add_argument("--out", metavar="RUN.trec", help="with --queries: the TREC run file (default: stdout)")
    p.add_argument("--batch", type=_positive_int, default=32, help="with --queries: queries per search call")
    p.add_argument("--overwrite", action="store_true", help="with --queries: replace an existing --out file")
    p.add_argument("--quiet", action="store_true", help="with --queries: no progress bar")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("serve", help="a search page and a JSON API over saved retrievers, side by side")
    p.add_argument("--model", required=True, action="append", help="a saved retriever directory "
                                                                    "(repeat for more channels)")
    _add_data(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free one)")
    p.add_argument("--batch-ms", type=_finite_float, default=5.0,
                   help="milliseconds a channel gathers concurrent requests into one search (default 5)")
    p.add_argument("--max-batch", type=_positive_int, default=32, help="queries per search call, at most")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="re-index a saved retriever on a changed or new catalog (no retraining)")
    p.add_argument("--model", required=True, help="a saved retriever directory")
    _add_data(p, threshold=False)
    p.add_argument("--out", required=True, help="output directory (the re-indexed retriever)")
    _add_overwrite(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("sid", help="semantic IDs: build them for a catalog, report their sand-glass stats")
    sid = p.add_subparsers(dest="sid_command", required=True)
    q = sid.add_parser("build", help="encode titles, quantise, prune, dedup; write the IDs and sandglass.png")
    _add_data(q)
    q.add_argument("--out", required=True, help="output directory (the SemanticIDs)")
    _add_overwrite(q)
    q.add_argument("--quantizer", default="rkmeans", choices=["rkmeans", "rqvae"])
    q.add_argument("--levels", type=int, default=3)
    q.add_argument("--codebook", type=int, default=256)
    q.add_argument("--prune", default="none", choices=["none", "drop", "adaptive"])
    q.add_argument("--top-k", type=int, default=16, help="adaptive pruning: drop the token where it is "
                                                          "among the K most frequent of its level")
    q.add_argument("--encoder", help="sentence-transformers/HF encoder path (default: packaged MiniLM)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=cmd_sid)
    q = sid.add_parser("report", help="per-level entropy/Gini/top shares, collisions, ID lengths")
    q.add_argument("dir", help="a SemanticIDs directory")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.set_defaults(func=cmd_sid)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, ArtifactError, ValueError, OSError) as e:
        print(f"genret {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"genret {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
