"""Sand-glass diagnostics: per-level token distributions, path sparsity, and a PNG plot."""

from __future__ import annotations

import os

import numpy as np


def normalized_entropy(counts: np.ndarray) -> float:
    """Shannon entropy of the count distribution divided by log(K), K = len(counts)."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(len(counts))) if len(counts) > 1 else 0.0


def gini(counts: np.ndarray) -> float:
    """Gini coefficient over all K codes (unused codes count as 0): 0 uniform, (K-1)/K one code."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    k, total = len(x), x.sum()
    if total == 0:
        return 0.0
    return float(2.0 * (np.arange(1, k + 1) * x).sum() / (k * total) - (k + 1) / k)


def level_stats(counts: np.ndarray) -> dict:
    """Normalised entropy, Gini, std of counts, top-1 / top-10 share and utilisation."""
    counts = np.asarray(counts, dtype=np.int64)
    n = counts.sum()
    top = np.sort(counts)[::-1]
    return {"entropy": normalized_entropy(counts), "gini": gini(counts), "std": float(counts.std()),
            "top1_share": float(top[0] / n), "top10_share": float(top[:10].sum() / n),
            "utilization": float((counts > 0).mean())}


def level_counts(codes: np.ndarray, codebook: int) -> np.ndarray:
    """(L, K) token counts per level."""
    return np.stack([np.bincount(codes[:, level], minlength=codebook) for level in range(codes.shape[1])])


def dominant_level(codes: np.ndarray, codebook: int) -> int:
    """The most concentrated level (1-based): lowest normalised entropy, the lower level on ties."""
    ent = [normalized_entropy(c) for c in level_counts(codes, codebook)]
    return int(np.argmin(ent)) + 1


def conditional_entropies(codes: np.ndarray, codebook: int) -> list[float]:
    """Per level, H(code | codes of the levels above) / log K: what the level adds along a path."""
    path_h = [0.0]
    for d in range(1, codes.shape[1] + 1):
        counts = np.unique(codes[:, :d], axis=0, return_counts=True)[1]
        p = counts / counts.sum()
        path_h.append(float(-(p * np.log(p)).sum()))
    return [(b - a) / np.log(codebook) for a, b in zip(path_h[:-1], path_h[1:])]


def path_sparsity(codes: np.ndarray, codebook: int) -> list[dict]:
    """Distinct code prefixes at each depth vs the K^d possible ones and vs n_items."""
    n, out = len(codes), []
    for d in range(1, codes.shape[1] + 1):
        distinct = len(np.unique(codes[:, :d], axis=0))
        possible = codebook ** d
        out.append({"depth": d, "distinct": distinct, "possible": possible,
                    "fraction_of_possible": distinct / possible, "fraction_of_items": distinct / n})
    return out


def plot_levels(counts: np.ndarray, path: str | os.PathLike, title: str = "") -> None:
    """Sorted token-frequency curves per level (share of items, log scale) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for level, c in enumerate(counts, start=1):
        share = np.sort(c)[::-1] / c.sum()
        st = level_stats(c)
        ax.plot(np.arange(1, len(c) + 1), np.where(share > 0, share, np.nan),
                label=f"level {level}: H/logK={st['entropy']:.3f}, Gini={st['gini']:.3f}, "
                      f"top1={st['top1_share']:.3f}")
    ax.axhline(1.0 / counts.shape[1], color="grey", ls=":", lw=1, label="uniform")
    ax.set_yscale("log")
    ax.set_xlabel("code rank (most frequent first)")
    ax.set_ylabel("share of items")
    ax.set_title(title or "token distribution per level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
