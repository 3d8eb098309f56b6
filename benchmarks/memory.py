"""Peak temporary memory of one ConicGrad step: stacked task gradients vs the Gramian-only mode.

XLA's compiled memory analysis (``temp_size_in_bytes``: buffers live inside the
jitted step, arguments and outputs excluded) of a step on a 2-layer tanh
encoder (m = 1,572,864 shared parameters) with K linear heads, for several K.

Usage:
  python -m benchmarks memory [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import conicgrad_jax as cg
from benchmarks import store as store_m
from benchmarks import timing


def measure(k, d=512, h=1024, batch=64, seed=0):
  rng = np.random.default_rng(seed)
  params = {"enc": {"w1": jnp.asarray(rng.standard_normal((d, h)) * 0.03, jnp.float32),
                    "w2": jnp.asarray(rng.standard_normal((h, h)) * 0.03, jnp.float32)},
            "heads": jnp.asarray(rng.standard_normal((h, k)) * 0.03, jnp.float32)}
  x = jnp.asarray(rng.standard_normal((batch, d)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((batch, k)), jnp.float32)

  def losses(p, x, y):
    z = jnp.tanh(jnp.tanh(x @ p["enc"]["w1"]) @ p["enc"]["w2"])
    return jnp.mean((z @ p["heads"] - y) ** 2, axis=0)

  shared = lambda path, leaf: "enc" in jax.tree_util.keystr(path)
  tx = cg.conicgrad(0.5, shared=shared, num_tasks=k)

  def stacked(p, x, y):
    _, g = cg.value_and_task_grads(losses, shared=shared)(p, x, y)
    return tx.update(g, tx.init(None), p)[0]

  def gramian(p, x, y):
    fn = cg.gramian_value_and_update(losses, lambda G: cg.conic_weighting(G, 0.5), shared=shared)
    return fn(p, x, y)[1]

  def temp_mib(f):
    return jax.jit(f).lower(params, x, y).compile().memory_analysis().temp_size_in_bytes / 2**20

  return {"K": k, "m_shared": d * h + h * h, "stacked_temp_MiB": temp_mib(stacked),
          "gramian_temp_MiB": temp_mib(gramian)}


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks memory")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  rows = [measure(k) for k in ((4, 8) if args.quick else (8, 32, 128))]
  name = "memory_quick" if args.quick else "memory"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump({"benchmark": "memory", "machine": timing.machine(),
               "library": store_m.library_fingerprint(), "rows": rows}, f, indent=2)
  for r in rows:
    print(f"K={r['K']:4d} m={r['m_shared']:,}: stacked {r['stacked_temp_MiB']:8.1f} MiB, "
          f"gramian-only {r['gramian_temp_MiB']:6.1f} MiB")
  return rows


if __name__ == "__main__":
  main()
