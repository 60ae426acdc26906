"""genret: generative retrieval for e-commerce product search."""

import os
from pathlib import Path

# The one place it is set, before torch is first imported (every genret module imports
# this package first): with libgomp's default busy-waiting, torch ran 10-20x slower
# whenever another process shared the two cores (measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def cache_dir(*parts: str) -> Path:
    """genret's cache root, ``$GENRET_CACHE`` (else ``./.cache``, resolved now), joined
    with ``parts``; the one place it is resolved."""
    return Path(os.environ.get("GENRET_CACHE") or Path.cwd() / ".cache", *parts)
