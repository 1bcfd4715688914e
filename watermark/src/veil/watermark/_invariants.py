"""``kernel_bag``: a reduction of a conv layer that no unit rewrite on EITHER side changes.

A conv weight ``W (out, in, kh, kw)`` is a grid of kernels ``K[o, c]`` with ``s = kh * kw``
taps. Function-preserving rewrites act on that grid by ``K[o, c] -> a_o * b_c * K[P(o), Q(c)]``:
permuting output channels (compensated in the next layer) or input channels (the previous
layer's outputs), rescaling across a ReLU (``a, b > 0``), sign flips around odd activations and
BatchNorm fused into or split off the layer (any nonzero ``a``). The reduction keeps what none
of them touches:

* each kernel's DIRECTION up to sign, through the even-degree monomials (degree 2, and degree 4
  when ``s <= 16``) of ``u = K / |K|``;
* a weight per kernel from the Sinkhorn balancing of the kernel norms ``N[o, c] = |K[o, c]|``
  (the unique ``S = D1 N D2`` with unit row sums and constant column sums), which removes every
  positive per-row and per-column scale, so kernels that matter little (small, and so noisy
  under int8 rounding or pruning) count little;
* summed over all kernels (so the order of either side does not matter), minus the value an
  isotropic (random-direction) kernel would give.

It is not sorted, so it is continuous in ``W``: int8 rounding and fine-tuning move it little. A
1x1 kernel has no direction to keep (``s`` must be at least 2); dense layers use ``unit_gram``.
Only numpy here: the verifier needs nothing else.
"""

from __future__ import annotations

import itertools
from functools import cache
from math import comb, prod

import numpy as np
import numpy.typing as npt

from veil.sdk.errors import WatermarkError

__all__ = [
    "SINKHORN_ITERATIONS",
    "kernel_bag",
    "kernel_bag_dim",
    "kernel_monomials",
    "sinkhorn",
]

FloatArray = npt.NDArray[np.float64]

# Degree-4 monomials only up to this many taps (4x4 kernels: 3876 of them); above it, degree 2.
_MAX_TAPS_DEGREE_4 = 16
SINKHORN_ITERATIONS = 500
_SINKHORN_TOLERANCE = 1e-13


def _degrees(taps: int) -> tuple[int, ...]:
    return (2, 4) if taps <= _MAX_TAPS_DEGREE_4 else (2,)


def kernel_bag_dim(weight_shape: tuple[int, ...]) -> int:
    """How many values ``kernel_bag`` gives for a conv weight of this shape (0 if it cannot)."""
    if len(weight_shape) != 4:
        return 0
    taps = prod(weight_shape[2:])
    if taps < 2:
        return 0
    return sum(comb(taps + d - 1, d) for d in _degrees(taps))


@cache
def kernel_monomials(taps: int) -> tuple[tuple[npt.NDArray[np.int64], FloatArray], ...]:
    """Per degree: the monomials' tap indices ``(M, degree)`` and their isotropic means ``(M,)``.

    For ``u`` uniform on the unit sphere in ``R^s``, ``E[prod u_i^(2 a_i)]`` is
    ``prod (2 a_i - 1)!! / (s (s + 2) ... (s + 2k - 2))`` with ``k = sum a_i``; odd powers give 0.
    """
    out = []
    for degree in _degrees(taps):
        index = np.array(
            list(itertools.combinations_with_replacement(range(taps), degree)), dtype=np.int64
        )
        means = np.zeros(len(index))
        for row, taps_used in enumerate(index):
            counts = np.bincount(taps_used, minlength=taps)
            if (counts % 2).any():
                continue
            half = counts // 2
            numerator = prod(prod(range(1, 2 * int(a), 2)) for a in half if a)
            denominator = prod(taps + 2 * j for j in range(int(half.sum())))
            means[row] = numerator / denominator
        out.append((index, means))
    return tuple(out)


def sinkhorn(norms: FloatArray) -> FloatArray:
    """The balanced form of a nonnegative matrix: rows sum to 1/rows, columns all equal.

    Any positive rescaling of rows and columns gives the same result (up to convergence, checked
    to 1e-13); an all-zero kernel is given a tiny norm so the balancing is defined.
    """
    scaled = norms + 1e-12 * max(float(norms.max()), 1e-300)
    rows, cols = scaled.shape
    for _ in range(SINKHORN_ITERATIONS):
        previous = scaled
        scaled = scaled / scaled.sum(axis=1, keepdims=True) / rows
        scaled = scaled / scaled.sum(axis=0, keepdims=True) / cols
        if np.max(np.abs(scaled - previous)) <= _SINKHORN_TOLERANCE * float(scaled.max()):
            break
    result: FloatArray = scaled / scaled.sum()
    return result


def kernel_bag(weight: FloatArray) -> FloatArray:
    """The ``kernel_bag`` vector of a conv weight ``(out, in, kh, kw)`` (see module docstring)."""
    if weight.ndim != 4 or kernel_bag_dim(weight.shape) == 0:
        raise WatermarkError(
            f"kernel_bag needs a conv weight with kernels of 2+ taps, not {weight.shape}"
        )
    out, inp = weight.shape[:2]
    kernels = weight.reshape(out, inp, -1).astype(np.float64)
    norms = np.linalg.norm(kernels, axis=2)
    balance = sinkhorn(norms)
    unit = kernels / np.maximum(norms, 1e-300)[..., None]
    parts = []
    for index, means in kernel_monomials(kernels.shape[2]):
        values = np.prod(unit[..., index], axis=-1)  # (out, in, M)
        parts.append(np.einsum("oc,ocm->m", balance, values) - means)
    vector: FloatArray = np.concatenate(parts)
    return vector
