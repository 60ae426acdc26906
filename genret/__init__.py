"""genret: generative retrieval for e-commerce product search."""

import os

# Set before torch is first imported: with libgomp's default busy-waiting, torch ran
# 10-20x slower whenever another process shared the two cores (measured here).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
