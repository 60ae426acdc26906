"""FM-index over integer token sequences: count, right-extension, next tokens, locate.

Standalone: depends on numpy, numba and pysais only.
"""

from .index import Documents, FMIndex, Range, Step, Symbols

__all__ = ["Documents", "FMIndex", "Range", "Step", "Symbols"]
