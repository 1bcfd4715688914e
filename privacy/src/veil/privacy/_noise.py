"""Randomness for DP-SGD: Poisson sampling and Gaussian noise.

Opacus' ``secure_mode`` needs ``torchcsprng``, which no longer builds against current torch.
Production mode here instead rekeys two ``torch.Generator`` objects (one for Poisson sampling,
one for noise) from the kernel CSPRNG (``os.urandom``) before *every* use — every sampled batch
and every noisy optimizer step — and turns on Opacus' floating-point-attack-resistant noise
(a sum of four Gaussians, Holohan & Braghin 2021).

Each rekey reads :data:`ENTROPY_BYTES` (32 bytes, 256 bits) from the kernel and expands them with
SHAKE-256 into the generator's *whole* state: on CPU all 624 words of the Mersenne Twister
(``torch.manual_seed`` would keep only 32 bits of a CPU seed), on CUDA the 64-bit Philox key and
its 64-bit counter offset (a multiple of 4: 126 bits of state, all the Philox generator holds).
Each step's randomness thus depends only on fresh kernel entropy, never on state an observer
could reconstruct from earlier steps. See docs/PRIVACY.md for the threat model and its limits.

Fast mode uses one seeded generator per stream (reproducible, for experiments and tests) and
warns with ``InsecureModeWarning`` on every training run.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from veil.sdk.errors import warn_insecure

__all__ = ["ENTROPY_BYTES", "NoiseMode", "NoiseSource", "rekey_generator"]

ENTROPY_BYTES = 32
"""Fresh kernel entropy read for every rekey of a secure stream (256 bits)."""

_MIN_KEY_BYTES = 16  # 128 bits: the least a key may carry
_MT_WORDS = 624  # Mersenne Twister state words (32 bits each)


class NoiseMode(enum.Enum):
    """``secure``: CSPRNG-reseeded generators (production). ``fast``: seeded, reproducible."""

    SECURE = "secure"
    FAST = "fast"


@dataclass
class NoiseSource:
    """The two random streams of one training job (per process under torch.distributed).

    Build with :meth:`secure` or :meth:`fast`; the trainer calls :meth:`before_sampling` ahead of
    every Poisson draw and :meth:`before_noise` ahead of every noisy optimizer step. Sampling
    always runs on the CPU (it draws row indices); the noise generator lives on ``device``, the
    device whose gradients the noise is added to.
    """

    mode: NoiseMode
    sampling: torch.Generator
    noise: torch.Generator
    _entropy: Callable[[int], bytes] | None = field(default=None, repr=False)

    @classmethod
    def secure(
        cls,
        entropy: Callable[[int], bytes] = os.urandom,
        *,
        device: torch.device | str = "cpu",
    ) -> NoiseSource:
        """Production randomness: every draw is preceded by a rekey from ``ENTROPY_BYTES`` of
        ``entropy`` (the kernel CSPRNG; inject another source only to test)."""
        src = cls(NoiseMode.SECURE, torch.Generator(), torch.Generator(device=device), entropy)
        src.before_sampling()
        src.before_noise()
        return src

    @classmethod
    def fast(cls, seed: int, *, rank: int = 0, device: torch.device | str = "cpu") -> NoiseSource:
        """Reproducible randomness from ``seed``. Sampling streams differ per ``rank`` (so ranks
        sample independently); the noise stream is the same one a single process would use."""
        sampling = torch.Generator()
        sampling.manual_seed(_derive(seed, f"sampling/{rank}"))
        noise = torch.Generator(device=device)
        noise.manual_seed(_derive(seed, "noise"))
        return cls(NoiseMode.FAST, sampling, noise)

    @property
    def is_secure(self) -> bool:
        return self.mode is NoiseMode.SECURE

    @property
    def device(self) -> torch.device:
        """Where the noise is drawn (and added)."""
        return self.noise.device

    def before_sampling(self) -> None:
        if self._entropy is not None:
            rekey_generator(self.sampling, self._fresh())

    def before_noise(self) -> None:
        if self._entropy is not None:
            rekey_generator(self.noise, self._fresh())

    def _fresh(self) -> bytes:
        assert self._entropy is not None
        key = self._entropy(ENTROPY_BYTES)
        if len(key) != ENTROPY_BYTES:
            raise RuntimeError(f"entropy source gave {len(key)} bytes, not {ENTROPY_BYTES}")
        return key

    def announce(self) -> None:
        """Called once per training run: fast mode warns, every time."""
        if not self.is_secure:
            warn_insecure(
                "DP training runs with seeded (fast) noise: reproducible and NOT secure "
                "against an adversary who can guess the seed; use NoiseSource.secure() in "
                "production"
            )


def rekey_generator(generator: torch.Generator, key: bytes) -> None:
    """Set ``generator``'s whole state from ``key`` (at least 16 bytes), expanded by SHAKE-256.

    CPU: the 624 Mersenne Twister words (19,937 bits of state), every one derived from the
    whole key, with the twist pending (the first draw regenerates the state from them).
    CUDA (Philox): the 64-bit key and a 64-bit counter offset rounded down to a multiple of 4.
    Different keys give different streams (up to SHAKE collisions); equal keys, equal streams.
    """
    if len(key) < _MIN_KEY_BYTES:
        raise ValueError(f"a generator key needs at least {_MIN_KEY_BYTES} bytes, got {len(key)}")
    if generator.device.type == "cpu":
        words = hashlib.shake_256(b"veil-dp/mt19937/" + key).digest(4 * _MT_WORDS)
        state = _cpu_template().copy()
        start = _cpu_state_offset()
        # torch keeps each 32-bit word in a little-endian uint64 slot
        state[start : start + 8 * _MT_WORDS].view("<u8")[:] = np.frombuffer(words, dtype="<u4")
        generator.set_state(torch.from_numpy(state))
        return
    material = hashlib.shake_256(b"veil-dp/philox/" + key).digest(16)
    generator.manual_seed(int.from_bytes(material[:8], "little"))
    generator.set_offset(int.from_bytes(material[8:], "little") & ~3)


_TEMPLATE_SEED = 0x5EED


@functools.cache
def _cpu_template() -> npt.NDArray[np.uint8]:
    """A freshly seeded CPU generator's state: twist pending, no cached normal sample (read-only;
    copy before changing)."""
    g = torch.Generator()
    g.manual_seed(_TEMPLATE_SEED)
    state = g.get_state().numpy().copy()
    state.flags.writeable = False
    return state


@functools.cache
def _cpu_state_offset() -> int:
    """Where the Mersenne Twister words lie in torch's CPU generator state (found, not assumed:
    fails closed if torch changes the layout)."""
    mt = [_TEMPLATE_SEED]
    for i in range(1, _MT_WORDS):
        mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
    start = _cpu_template().tobytes().find(struct.pack(f"<{_MT_WORDS}Q", *mt))
    if start < 0:
        raise RuntimeError("torch's CPU generator state has an unknown layout; cannot rekey it")
    return start


def _derive(seed: int, label: str) -> int:
    digest = hashlib.sha256(f"veil-dp/{seed}/{label}".encode()).digest()
    return int.from_bytes(digest[:8], "little")
