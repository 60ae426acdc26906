"""Residual quantisers: residual k-means (Faiss) and RQ-VAE (torch). Seeded and deterministic.

Both map (n, dim) float32 embeddings to (n, levels) int codes, decode codes back to the
embedding space, and export their state as a config dict plus numpy arrays (no pickle).
"""

from __future__ import annotations

import numpy as np

from .artifact import SemanticIDError

QUANTIZERS = ("rkmeans", "rqvae")


def check_embeddings(x: np.ndarray) -> np.ndarray:
    """Strict boundary: a finite, non-empty 2-D float32 C-contiguous array."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise SemanticIDError(f"embeddings must be a non-empty (n_items, dim) array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise SemanticIDError(f"{bad} embedding row(s) contain NaN or inf; fix or drop those items")
    return x


def check_shape(levels: int, codebook: int, n_items: int | None = None) -> None:
    if int(levels) < 1:
        raise SemanticIDError(f"levels must be >= 1, got {levels}")
    if int(codebook) < 2:
        raise SemanticIDError(f"codebook size must be >= 2, got {codebook}")
    if n_items is not None and codebook > n_items:
        raise SemanticIDError(f"codebook size {codebook} exceeds the number of items {n_items}; "
                              "use a codebook of at most n_items codes")


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    return index.search(x, 1)[1][:, 0]


class ResidualKMeans:
    """Faiss k-means per level on the residuals of the previous levels."""

    name = "rkmeans"

    def __init__(self, levels: int = 3, codebook: int = 256, seed: int = 0, niter: int = 20):
        check_shape(levels, codebook)
        self.levels, self.codebook, self.seed, self.niter = int(levels), int(codebook), int(seed), int(niter)
        self.codebooks: np.ndarray | None = None  # (levels, codebook, dim)

    def config(self) -> dict:
        return {"name": self.name, "levels": self.levels, "codebook": self.codebook,
                "seed": self.seed, "niter": self.niter}

    def fit(self, x: np.ndarray, progress: bool = False) -> ResidualKMeans:
        import faiss
        from tqdm.auto import tqdm

        x = check_embeddings(x)
        check_shape(self.levels, self.codebook, len(x))
        r, books = x.copy(), []
        for level in tqdm(range(self.levels), disable=not progress, desc="rkmeans", unit="level"):
            km = faiss.Kmeans(x.shape[1], self.codebook, niter=self.niter, seed=self.seed + level,
                              min_points_per_centroid=1, max_points_per_centroid=1 << 20)
            km.train(r)
            books.append(km.centroids.copy())
            r -= books[-1][_nearest(r, books[-1])]
        self.codebooks = np.stack(books)
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        x = check_embeddings(x)
        r, codes = x.copy(), np.empty((len(x), self.levels), dtype=np.int32)
        for level, book in enumerate(self.codebooks):
            codes[:, level] = _nearest(r, book)
            r -= book[codes[:, level]]
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return sum(book[codes[:, level]] for level, book in enumerate(self.codebooks))

    def arrays(self) -> dict[str, np.ndarray]:
        return {"codebooks": self.codebooks}

    @classmethod
    def from_arrays(cls, config: dict, arrays: dict[str, np.ndarray]) -> ResidualKMeans:
        q = cls(config["levels"], config["codebook"], config["seed"], config["niter"])
        q.codebooks = arrays["codebooks"]
        return q


class RQVAE:
    """RQ-VAE: MLP encoder -> residual quantisation in latent space -> MLP decoder.

    Codebooks are initialised by residual k-means on the initial latents; training uses the
    reconstruction loss plus, per level, the codebook loss ``|sg(r) - e|^2`` and the
    commitment loss ``beta * |r - sg(e)|^2``, a straight-through estimator for the
    quantised latent, and resets codes unused during an epoch to random residuals.
    """

    name = "rqvae"

    def __init__(self, levels: int = 3, codebook: int = 256, seed: int = 0, hidden: tuple = (256, 128),
                 latent: int = 64, epochs: int = 30, batch_size: int = 512, lr: float = 1e-3,
                 beta: float = 0.25):
        check_shape(levels, codebook)
        self.levels, self.codebook, self.seed = int(levels), int(codebook), int(seed)
        self.hidden, self.latent = tuple(int(h) for h in hidden), int(latent)
        self.epochs, self.batch_size, self.lr, self.beta = int(epochs), int(batch_size), float(lr), float(beta)
        self.module = None
        self.history: list[dict] = []

    def config(self) -> dict:
        return {"name": self.name, "levels": self.levels, "codebook": self.codebook, "seed": self.seed,
                "hidden": list(self.hidden), "latent": self.latent, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "beta": self.beta}

    def _build(self, dim: int):
        import torch
        from torch import nn

        def mlp(sizes):
            layers = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            return nn.Sequential(*layers[:-1])

        module = nn.Module()
        module.encoder = mlp([dim, *self.hidden, self.latent])
        module.decoder = mlp([self.latent, *reversed(self.hidden), dim])
        module.codebooks = nn.Parameter(torch.zeros(self.levels, self.codebook, self.latent))
        return module

    def _quantize(self, z):
        """Per level: nearest code of the residual. Returns codes, quantised sum, residuals, codewords."""
        import torch

        r, codes, residuals, words = z, [], [], []
        for book in self.module.codebooks:
            c = torch.cdist(r, book).argmin(dim=1)
            e = book[c]
            codes.append(c)
            residuals.append(r)
            words.append(e)
            r = r - e.detach()
        return torch.stack(codes, 1), sum(words), residuals, words

    def fit(self, x: np.ndarray, progress: bool = False) -> RQVAE:
        import torch

        x = check_embeddings(x)
        check_shape(self.levels, self.codebook, len(x))
        before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        torch.use_deterministic_algorithms(True)  # index backward is otherwise thread-order dependent
        try:
            self._train(x, progress)
        finally:
            torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        return self

    def _train(self, x: np.ndarray, progress: bool) -> None:
        import torch
        from tqdm.auto import tqdm

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.module = self._build(x.shape[1])
            xt = torch.from_numpy(x)
            with torch.no_grad():
                z0 = self.module.encoder(xt).numpy()
                init = ResidualKMeans(self.levels, self.codebook, self.seed, niter=10).fit(z0)
                self.module.codebooks.copy_(torch.from_numpy(init.codebooks))
            opt = torch.optim.Adam(self.module.parameters(), lr=self.lr)
            self.history = []
            for epoch in tqdm(range(self.epochs), disable=not progress, desc="rqvae", unit="epoch"):
                used = torch.zeros(self.levels, self.codebook, dtype=torch.long)
                perm = torch.randperm(len(xt), generator=gen)
                totals = np.zeros(3)
                for start in range(0, len(xt), self.batch_size):
                    xb = xt[perm[start:start + self.batch_size]]
                    z = self.module.encoder(xb)
                    codes, zq, residuals, words = self._quantize(z)
                    z_st = z + (zq - z).detach()  # straight-through
                    recon = ((self.module.decoder(z_st) - xb) ** 2).sum(1).mean()
                    cb = sum(((r.detach() - e) ** 2).sum(1).mean() for r, e in zip(residuals, words))
                    commit = sum(((r - e.detach()) ** 2).sum(1).mean() for r, e in zip(residuals, words))
                    loss = recon + cb + self.beta * commit
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    for level in range(self.levels):
                        used[level] += torch.bincount(codes[:, level], minlength=self.codebook)
                    totals += [recon.item() * len(xb), cb.item() * len(xb), commit.item() * len(xb)]
                dead = (used == 0).sum(1)
                self.history.append({"epoch": epoch + 1, "recon": totals[0] / len(xt),
                                     "codebook": totals[1] / len(xt), "commit": totals[2] / len(xt),
                                     "dead_codes": dead.tolist()})
                if epoch + 1 < self.epochs and dead.any():
                    self._reset_dead(xb, used == 0, gen)

    def _reset_dead(self, xb, dead, gen) -> None:
        """Move unused codes onto random residuals of the last batch at their level."""
        import torch

        with torch.no_grad():
            _, _, residuals, _ = self._quantize(self.module.encoder(xb))
            for level in range(self.levels):
                idx = dead[level].nonzero()[:, 0]
                if len(idx):
                    pick = torch.randint(len(xb), (len(idx),), generator=gen)
                    self.module.codebooks[level, idx] = residuals[level][pick]

    def encode(self, x: np.ndarray) -> np.ndarray:
        import torch

        x = check_embeddings(x)
        with torch.no_grad():
            out = [self._quantize(self.module.encoder(torch.from_numpy(x[s:s + 8192])))[0]
                   for s in range(0, len(x), 8192)]
        return torch.cat(out).numpy().astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            books = self.module.codebooks
            z = sum(books[level][torch.from_numpy(np.asarray(codes[:, level], dtype=np.int64))]
                    for level in range(self.levels))
            return self.module.decoder(z).numpy()

    def arrays(self) -> dict[str, np.ndarray]:
        return {k.replace(".", "_"): v.detach().numpy().copy()
                for k, v in self.module.state_dict().items()}

    @classmethod
    def from_arrays(cls, config: dict, arrays: dict[str, np.ndarray]) -> RQVAE:
        import torch

        q = cls(**{k: v for k, v in config.items() if k != "name"})
        q.module = q._build(arrays["encoder_0_weight"].shape[1])
        state = q.module.state_dict()
        missing = {k for k in state if k.replace(".", "_") not in arrays}
        if missing:
            raise SemanticIDError(f"RQ-VAE state lacks {sorted(missing)}; rebuild the artifact")
        q.module.load_state_dict({k: torch.from_numpy(arrays[k.replace(".", "_")]) for k in state})
        return q


def make_quantizer(name: str, levels: int = 3, codebook: int = 256, seed: int = 0, **options):
    """A quantiser by name (``rkmeans`` or ``rqvae``); options go to its constructor."""
    if name == "rkmeans":
        return ResidualKMeans(levels, codebook, seed, **options)
    if name == "rqvae":
        return RQVAE(levels, codebook, seed, **options)
    raise SemanticIDError(f"unknown quantizer {name!r}; choose one of {', '.join(QUANTIZERS)}")


def quantizer_from_arrays(config: dict, arrays: dict[str, np.ndarray]):
    cls = {"rkmeans": ResidualKMeans, "rqvae": RQVAE}.get(config.get("name"))
    if cls is None:
        raise SemanticIDError(f"unknown quantizer {config.get('name')!r} in the manifest; rebuild it")
    return cls.from_arrays(config, arrays)
