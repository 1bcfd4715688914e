"""Randomness for DP-SGD: Poisson sampling and Gaussian noise.

Opacus' ``secure_mode`` needs ``torchcsprng``, which no longer builds against current torch.
Production mode here instead reseeds two ``torch.Generator`` objects (one for Poisson sampling,
one for noise) from the kernel CSPRNG (``os.urandom``) before *every* use — every sampled batch
and every noisy optimizer step — and turns on Opacus' floating-point-attack-resistant noise
(a sum of four Gaussians, Holohan & Braghin 2021). Each step's randomness thus depends only on
64 fresh bits from the kernel, never on state an observer could reconstruct from earlier steps.
See docs/PRIVACY.md for the threat model and its limits.

Fast mode uses one seeded generator per stream (reproducible, for experiments and tests) and
warns with ``InsecureModeWarning`` on every training run.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from veil.sdk.errors import warn_insecure

__all__ = ["NoiseMode", "NoiseSource"]


class NoiseMode(enum.Enum):
    """``secure``: CSPRNG-reseeded generators (production). ``fast``: seeded, reproducible."""

    SECURE = "secure"
    FAST = "fast"


@dataclass
class NoiseSource:
    """The two random streams of one training job (per process under torch.distributed).

    Build with :meth:`secure` or :meth:`fast`; the trainer calls :meth:`before_sampling` ahead of
    every Poisson draw and :meth:`before_noise` ahead of every noisy optimizer step.
    """

    mode: NoiseMode
    sampling: torch.Generator
    noise: torch.Generator
    _entropy: Callable[[int], bytes] | None = field(default=None, repr=False)

    @classmethod
    def secure(cls, entropy: Callable[[int], bytes] = os.urandom) -> NoiseSource:
        """Production randomness: every draw is preceded by a reseed from ``entropy``."""
        src = cls(NoiseMode.SECURE, torch.Generator(), torch.Generator(), entropy)
        src.before_sampling()
        src.before_noise()
        return src

    @classmethod
    def fast(cls, seed: int, *, rank: int = 0) -> NoiseSource:
        """Reproducible randomness from ``seed``. Sampling streams differ per ``rank`` (so ranks
        sample independently); the noise stream is the same one a single process would use."""
        sampling = torch.Generator()
        sampling.manual_seed(_derive(seed, f"sampling/{rank}"))
        noise = torch.Generator()
        noise.manual_seed(_derive(seed, "noise"))
        return cls(NoiseMode.FAST, sampling, noise)

    @property
    def is_secure(self) -> bool:
        return self.mode is NoiseMode.SECURE

    def before_sampling(self) -> None:
        if self._entropy is not None:
            self.sampling.manual_seed(int.from_bytes(self._entropy(8), "little"))

    def before_noise(self) -> None:
        if self._entropy is not None:
            self.noise.manual_seed(int.from_bytes(self._entropy(8), "little"))

    def announce(self) -> None:
        """Called once per training run: fast mode warns, every time."""
        if not self.is_secure:
            warn_insecure(
                "DP training runs with seeded (fast) noise: reproducible and NOT secure "
                "against an adversary who can guess the seed; use NoiseSource.secure() in "
                "production",
                stacklevel=4,
            )


def _derive(seed: int, label: str) -> int:
    digest = hashlib.sha256(f"veil-dp/{seed}/{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little")
