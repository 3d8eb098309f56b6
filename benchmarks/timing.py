"""Side-by-side timing: interleaved rounds so that machine noise hits every candidate alike."""

from __future__ import annotations

import time
from typing import Callable

import jax
import numpy as np


def round_orders(names: list, rounds: int, seed: int = 0) -> list:
  """One order of ``names`` per round, each a fresh seeded permutation: a candidate
  follows a different one from round to round (a fixed or merely rotated order would
  give it the same predecessor, whose traces in caches and memory then bias its time)."""
  rng = np.random.default_rng(seed)
  return [[names[i] for i in rng.permutation(len(names))] for _ in range(rounds)]


def interleaved_times(candidates: dict[str, Callable[[], object]], rounds: int,
                      warmup: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
  """Calls each candidate once per round, in a random order per round (:func:`round_orders`),
  after ``warmup`` untimed rounds; returns seconds per call."""
  names = list(candidates)
  for _ in range(warmup):
    for name in names:
      jax.block_until_ready(candidates[name]())
  times = {name: [] for name in names}
  for order in round_orders(names, rounds, seed):
    for name in order:
      t0 = time.perf_counter()
      jax.block_until_ready(candidates[name]())
      times[name].append(time.perf_counter() - t0)
  return {name: np.asarray(v) for name, v in times.items()}


def compiled_call(jitted, *args):
  """Compiles ``jitted`` for ``args`` once (ahead of time); returns it and a call on ``args``."""
  compiled = jitted.lower(*args).compile()
  return compiled, lambda: compiled(*args)


def summary(times: np.ndarray) -> dict:
  return {"median_s": float(np.median(times)), "q25_s": float(np.quantile(times, 0.25)),
          "q75_s": float(np.quantile(times, 0.75)), "n": int(times.size)}


def machine() -> dict:
  import os
  import platform
  return {"platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()], "cpu_count": os.cpu_count()}
