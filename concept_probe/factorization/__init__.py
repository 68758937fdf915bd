"""Factorization: convex NMF, Semi-NMF, their solver kernels and the NNLS encoder.

This package sees tensors only; it knows nothing of models, images or tokens.
"""

from .convex_nmf import ConvexNMF
from .semi_nmf import SemiNMF

__all__ = ["ConvexNMF", "SemiNMF"]
