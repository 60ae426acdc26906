"""CPU seconds of one MiniLM SFT step (forward + backward) for the multispan and semantic-ID
channels, with trl's fused LM head scoring every position (trl's CPU default) or only the
labelled ones (genret's ``training._score_labelled_positions_only``; exact).

    python benchmarks/sft_step.py [--data PATH] [--sid results/semantic/hd-3x256-none] [--steps 4]

Each channel's real SFT examples (``examples()`` after the channel's own setup: MiniLM
prefix-LM, LoRA, the ID/marker rows trainable) and ``training.sft`` itself, batch 32; the
time is process CPU seconds inside ``Trainer.training_step`` (the optimiser step, the same
for both, is left out), the first step excluded as warm-up. The final losses of the two
variants are reported too (they should agree). Writes benchmarks/results/sft_step.{json,md}.
"""

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import genret.training as gt  # noqa: E402
from genret.data import load_dataset  # noqa: E402
from genret.lexical import MultispanRetriever  # noqa: E402
from genret.semantic import SemanticIDRetriever  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--sid", default="results/semantic/hd-3x256-none", help="semantic IDs (genret sid build)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/sft_step")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)

    times, losses = [], []
    orig_step = transformers.Trainer.training_step

    def timed_step(self, *a, **kw):
        t0 = time.process_time()
        loss = orig_step(self, *a, **kw)
        times.append(time.process_time() - t0)
        losses.append(float(loss))
        return loss

    transformers.Trainer.training_step = timed_step
    res = {"threads": torch.get_num_threads(), "steps": args.steps, "batch_size": 32, "channels": {}}
    for name, r in (("multispan", MultispanRetriever()), ("semantic-id", SemanticIDRetriever(sid=args.sid))):
        r._fitted_on(ds)
        r._load_start(ds)
        r._setup_catalog(ds)
        rng = np.random.default_rng(0)
        ex = r.examples(ds, rng)
        ex = [ex[i] for i in rng.permutation(len(ex))[: 32 * (args.steps + 1)]]
        tokens = float(np.mean([len(p) + len(c) + 1 for p, c in ex]))
        labelled = float(np.mean([len(c) + 1 for _, c in ex]))
        row = {"examples_tokens_mean": tokens, "labelled_tokens_mean": labelled}
        for variant in ("every", "labelled"):
            times.clear()
            losses.clear()
            # "every": trl's own CPU behaviour, genret's narrowing switched off
            head = mock.patch.object(gt, "_score_labelled_positions_only", contextlib.nullcontext) \
                if variant == "every" else contextlib.nullcontext()
            with tempfile.TemporaryDirectory() as tmp, head:
                cfg = gt.TrainConfig(max_steps=args.steps + 1, batch_size=32, progress=False, save_steps=10**9)
                gt.sft(copy.deepcopy(r.model), r.tokenizer, ex, tmp, cfg, trainable_tokens=r._trainable_tokens())
            row[variant] = {"cpu_s_per_step": float(np.mean(times[1:])), "losses": losses[:]}
        row["speedup"] = row["every"]["cpu_s_per_step"] / row["labelled"]["cpu_s_per_step"]
        res["channels"][name] = row
        print(name, json.dumps(row), file=sys.stderr, flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    lines = [f"MiniLM SFT step (LoRA, batch 32, forward + backward), process CPU s, {res['threads']} thread(s), "
             f"mean of {args.steps} steps after one warm-up; trl's fused LM head scoring every position vs only "
             "the labelled ones", "",
             "| channel | tokens / example | labelled / example | every position | labelled only | speed-up | "
             "last loss (every / labelled) |", "|---|---|---|---|---|---|---|"]
    for name, row in res["channels"].items():
        lines.append(f"| {name} | {row['examples_tokens_mean']:.1f} | {row['labelled_tokens_mean']:.1f} | "
                     f"{row['every']['cpu_s_per_step']:.2f} | {row['labelled']['cpu_s_per_step']:.2f} | "
                     f"{row['speedup']:.2f}x | {row['every']['losses'][-1]:.4f} / {row['labelled']['losses'][-1]:.4f} |")
    md = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
