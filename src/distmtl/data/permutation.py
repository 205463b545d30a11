"""Keyed pseudo-random permutations of ``[0, n)`` evaluated at chosen positions, never built whole.

The sampler reads each training source as a stream of fresh permutations. Building
``rng.permutation(n)`` for every source each epoch costs time and memory in the rows of the mix
(millions of indices per rank); a keyed permutation gives the value at any position directly, so
an epoch only evaluates the positions it draws, a block at a time, and a resumed run can start in
the middle of a pass.

The construction is a generalised Feistel network on ``Z_a x Z_b`` (Black & Rogaway, "Ciphers with
arbitrary finite domains", CT-RSA 2002, method FE2) with ``a = ceil(sqrt(n))``, ``b = ceil(n / a)``,
so ``a * b - n < a``; the few values that land at or beyond ``n`` are walked through the network
again until they fall below it (cycle walking), which keeps the map a bijection of ``[0, n)``.
The round function is SplitMix64's finaliser of the round key xor the half.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

ROUNDS = 6
_M64 = 0xFFFF_FFFF_FFFF_FFFF
_GOLDEN = 0x9E3779B97F4A7C15


def _mix_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def round_keys(key: Sequence[int], n: int = ROUNDS) -> list[int]:
    """``n`` 64-bit round keys derived from a tuple of integers (negative ones included)."""
    h = _GOLDEN
    for part in key:
        h = _mix_int(((h ^ (int(part) & _M64)) + _GOLDEN) & _M64)
    return [_mix_int((h + _GOLDEN * (i + 1)) & _M64) for i in range(n)]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class KeyedPermutation:
    """The permutation of ``[0, n)`` chosen by ``key``; ``perm(positions)`` gives its values there."""

    def __init__(self, n: int, key: Sequence[int]):
        self.n = int(n)
        if self.n <= 0:
            raise ValueError(f"a permutation of [0, {n}) needs n >= 1")
        self.a = max(1, math.isqrt(self.n - 1) + 1)  # ceil(sqrt(n))
        self.b = -(-self.n // self.a)
        self.keys = [np.uint64(k) for k in round_keys(key)]

    def _network(self, x: np.ndarray) -> np.ndarray:
        a, b = np.uint64(self.a), np.uint64(self.b)
        left, right = x % a, x // a  # left in Z_a, right in Z_b
        for j, k in enumerate(self.keys):
            modulus = a if j % 2 == 0 else b
            left, right = right, (left + _mix(right ^ k) % modulus) % modulus
        return left + a * right  # an even number of rounds: left in Z_a, right in Z_b again

    def __call__(self, positions) -> np.ndarray:
        x = np.asarray(positions, dtype=np.uint64)
        if self.n == 1:
            return np.zeros(x.shape, dtype=np.int64)
        with np.errstate(over="ignore"):
            x = self._network(x)
            out = np.flatnonzero(x >= self.n)
            while len(out):
                x[out] = self._network(x[out])
                out = out[x[out] >= self.n]
        return x.astype(np.int64)


def stream_values(size: int, key: Sequence[int], start: int, n: int) -> np.ndarray:
    """Positions ``start .. start+n-1`` of a stream of passes over ``[0, size)``: position ``i``
    is ``perm_p(i mod size)`` of pass ``p = i // size``, pass ``p`` keyed by ``(*key, p)``."""
    out = np.empty(n, dtype=np.int64)
    for p in range(start // size, (start + n - 1) // size + 1) if n > 0 else ():
        lo, hi = max(start, p * size), min(start + n, (p + 1) * size)
        out[lo - start: hi - start] = KeyedPermutation(size, (*key, p))(np.arange(lo - p * size, hi - p * size))
    return out
