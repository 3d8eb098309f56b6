"""Aggregation cost of every method behind the same API.

For K ∈ {10, 40} and m parameters in a 4-leaf pytree (float32, CPU), each
method's jitted ``update`` (Gram/Jacobian work + weighting + combination, and the
new state with any buffers the method keeps) is
timed in interleaved rounds together with ``linear_scalarization``, and
reported as a ratio to it (medians of the same run).

Usage:
  python -m benchmarks methods [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

import conicgrad_jax as cg
from benchmarks import timing


def stacked(k, m, seed=0):
  rng = np.random.default_rng(seed)
  sizes = [m // 2, m // 4, m // 8, m - m // 2 - m // 4 - m // 8]
  grads = {f"leaf{i}": jnp.asarray(rng.standard_normal((k, s)), jnp.float32)
           for i, s in enumerate(sizes)}
  grads["leaf0"] = grads["leaf0"].at[1:].add(-0.8 * grads["leaf0"][0])
  params = {name: jnp.zeros(g.shape[1:], jnp.float32) for name, g in grads.items()}
  return grads, params


def bench(k, m, rounds):
  grads, params = stacked(k, m, seed=k)
  losses = jnp.linspace(0.5, 1.5, k).astype(jnp.float32)
  calls = {}
  for name, info in cg.methods().items():
    tx = info.factory(num_tasks=k)
    state = tx.init(params)
    # The whole step, update and new state (a method's buffers, e.g. MoCo's K×m
    # tracking, are part of its cost; returning the update alone would let XLA drop them).
    step = jax.jit(lambda g, s, tx=tx: tx.update(g, s, params, losses=losses))
    calls[name] = (lambda step=step, state=state: step(grads, state))
  times = timing.interleaved_times(calls, rounds)
  base = np.median(times["linear_scalarization"])
  return [{"method": name, "K": k, "m": m, **timing.summary(t),
           "ratio_to_linear_scalarization": float(np.median(t) / base)}
          for name, t in times.items()]


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ks = sorted({r["K"] for r in rows})
  names = sorted({r["method"] for r in rows},
                 key=lambda n: next(r["ratio_to_linear_scalarization"] for r in rows
                                    if r["method"] == n and r["K"] == ks[-1]))
  fig, ax = plt.subplots(figsize=(8, 0.32 * len(names) + 1.5))
  y = np.arange(len(names))
  for i, k in enumerate(ks):
    vals = [next(r["ratio_to_linear_scalarization"] for r in rows
                 if r["method"] == n and r["K"] == k) for n in names]
    ax.barh(y + 0.4 * i, vals, height=0.4, label=f"K = {k}")
  ax.set_yticks(y + 0.2, names)
  ax.set_xscale("log")
  ax.axvline(1.0, color="k", lw=0.8)
  ax.set_xlabel("update time / linear_scalarization update time (median, same run)")
  ax.set_title(f"Aggregation cost per method, m = {rows[0]['m']:,}, float32, CPU")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks methods")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  m = 50_000 if args.quick else 1_000_000
  rounds = 2 if args.quick else 7
  rows = []
  for k in tqdm((10, 40), desc="K"):
    rows += bench(k, m, rounds)
  name = "methods_quick" if args.quick else "methods"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump({"benchmark": "methods", "quick": args.quick, "machine": timing.machine(),
               "rows": rows}, f, indent=2)
  plot(rows, os.path.join(args.out, f"{name}.png"))
  print(f"{'method':<24} {'K=10 ms':>9} {'x LS':>7} {'K=40 ms':>9} {'x LS':>7}")
  for method in sorted({r["method"] for r in rows}):
    r10, r40 = (next(r for r in rows if r["method"] == method and r["K"] == k) for k in (10, 40))
    print(f"{method:<24} {1e3 * r10['median_s']:9.1f} {r10['ratio_to_linear_scalarization']:7.2f} "
          f"{1e3 * r40['median_s']:9.1f} {r40['ratio_to_linear_scalarization']:7.2f}")
  return rows


if __name__ == "__main__":
  main()
