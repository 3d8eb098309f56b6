"""ConicGrad solver and aggregation cost.

1. Solver alone, from a given Gram matrix: Newton iterations, certified
   relative duality gap and time per solve for K ∈ {2, 10, 40, 128} (float32
   and float64), on strongly conflicting random gradients.
2. The whole aggregation (Gram + solve + combine) at K = 40, m = 1M, float32,
   on a 4-leaf pytree, beside ``jnp.mean`` over the task axis and beside a
   plain ``J @ J.T`` (and the BLAS floor ``J @ J.T`` + ``w @ J``) on the same
   data as one array, all timed interleaved in one run.

Usage:
  python -m benchmarks solver [--quick] [--out benchmarks/results]
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

SOLVER_KS = (2, 10, 40, 128)


def conflicting_gradients(k, m, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m)).astype(dtype)
  J[1:] -= 0.8 * J[0]
  return J


def bench_solver(ks, rounds, dtypes):
  rows = []
  for dtype in dtypes:
    with jax.enable_x64(dtype == "float64"):
      for k in tqdm(ks, desc=f"solver {dtype}"):
        J = conflicting_gradients(k, max(4 * k, 64), seed=k, dtype=np.float64)
        G = jnp.asarray(J @ J.T, dtype)
        solve = jax.jit(cg.solve_cone_dual)
        _, diag = solve(G, 0.5)
        t = timing.interleaved_times({"solve": lambda: solve(G, 0.5)}, rounds)["solve"]
        rows.append({"K": k, "dtype": dtype, "iterations": int(diag.iterations),
                     "residual": float(diag.residual), **timing.summary(t)})
  return rows


def bench_aggregation(k, m, rounds, seed=0):
  rng = np.random.default_rng(seed)
  sizes = [m // 2, m // 4, m // 8, m - m // 2 - m // 4 - m // 8]
  leaves = {f"leaf{i}": jnp.asarray(rng.standard_normal((k, s)), jnp.float32)
            for i, s in enumerate(sizes)}
  leaves["leaf0"] = leaves["leaf0"].at[1:].add(-0.8 * leaves["leaf0"][0])
  J = jnp.concatenate(list(leaves.values()), axis=1)   # the same data as one array
  w = jnp.full((k,), 1.0 / k, jnp.float32)
  tx = cg.conicgrad(0.5, num_tasks=k)
  state = tx.init(None)
  hi = jax.lax.Precision.HIGHEST

  update = jax.jit(tx.update)   # the update and the new state; the state is an argument
  candidates = {
      "conicgrad (Gram + solve + combine)": lambda g: update(g, state),
      "gram only (pytree)": jax.jit(cg.gram_matrix),
      "jnp.mean over tasks": jax.jit(lambda g: jax.tree_util.tree_map(lambda x: jnp.mean(x, 0), g)),
  }
  array_candidates = {
      "J @ J.T (one array)": jax.jit(lambda J: jnp.matmul(J, J.T, precision=hi)),
      "BLAS floor: J @ J.T + w @ J": jax.jit(
          lambda J: (jnp.matmul(J, J.T, precision=hi), jnp.matmul(w, J, precision=hi))),
  }
  calls = {name: (lambda f=f: f(leaves)) for name, f in candidates.items()}
  calls.update({name: (lambda f=f: f(J)) for name, f in array_candidates.items()})
  times = timing.interleaved_times(calls, rounds)
  _, st = tx.update(leaves, state)
  base = np.median(times["J @ J.T (one array)"])
  rows = [{"candidate": name, **timing.summary(t),
           "ratio_to_JJt": float(np.median(t) / base)} for name, t in times.items()]
  return {"K": k, "m": m, "rows": rows,
          "conicgrad_iterations": int(st.diagnostics.iterations),
          "conicgrad_residual": float(st.diagnostics.residual)}


def plot(result, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
  for dtype in sorted({r["dtype"] for r in result["solver"]}):
    rows = [r for r in result["solver"] if r["dtype"] == dtype]
    ax1.plot([r["K"] for r in rows], [1e3 * r["median_s"] for r in rows], "o-", label=dtype)
  ax1.set_xscale("log")
  ax1.set_yscale("log")
  ax1.set_xlabel("K (tasks)")
  ax1.set_ylabel("solve time from G (ms, median)")
  ax1.set_title("Cone solver, CPU")
  ax1.legend()
  agg = result["aggregation"]
  names = [r["candidate"] for r in agg["rows"]]
  ratios = [r["ratio_to_JJt"] for r in agg["rows"]]
  ax2.barh(names, ratios, color=["tab:blue" if "conic" in n else "tab:gray" for n in names])
  ax2.axvline(1.0, color="k", lw=0.8)
  ax2.set_xlabel("time / time of J @ J.T (median, same run)")
  ax2.set_title(f"Aggregation, K={agg['K']}, m={agg['m']:,}, float32, CPU")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks solver")
  parser.add_argument("--quick", action="store_true", help="small sizes, few rounds")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  ks = (2, 10) if args.quick else SOLVER_KS
  m = 100_000 if args.quick else 1_000_000
  rounds = 3 if args.quick else 15
  result = {
      "benchmark": "solver",
      "quick": args.quick,
      "machine": timing.machine(),
      "solver": bench_solver(ks, rounds, ("float32", "float64")),
      "aggregation": bench_aggregation(40, m, rounds),
  }
  os.makedirs(args.out, exist_ok=True)
  name = "solver_quick" if args.quick else "solver"
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  plot(result, os.path.join(args.out, f"{name}.png"))
  print(f"{'K':>4} {'dtype':>8} {'iters':>6} {'residual':>10} {'ms/solve':>9}")
  for r in result["solver"]:
    print(f"{r['K']:>4} {r['dtype']:>8} {r['iterations']:>6} {r['residual']:>10.1e} "
          f"{1e3 * r['median_s']:>9.2f}")
  agg = result["aggregation"]
  print(f"\naggregation K={agg['K']} m={agg['m']:,} float32 (median of interleaved rounds)")
  for r in agg["rows"]:
    print(f"  {r['candidate']:<36} {1e3 * r['median_s']:8.2f} ms   x{r['ratio_to_JJt']:.2f} of J@J.T")
  print(f"wrote {args.out}/{name}.json and .png")
  return result


if __name__ == "__main__":
  main()
