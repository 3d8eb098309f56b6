"""Performance against the hardware floor, against torchjd, and per training-step mode.

Three parts, each timed in interleaved rounds (medians; ratios within one run):

* ``aggregation``: ConicGrad's update (Gram + solve + combine on a 4-leaf
  pytree) for K ∈ {2, 10, 40, 128} × m ∈ {1e5, 1e6, 5.2e6}, float32, against
  the BLAS floor on the same data as one K×m array (``J @ J.T`` then
  ``w @ J``), the plain Gram ``J @ J.T`` and the upper-triangle blocked Gram.
* ``torchjd``: the same Jacobians (K ∈ {2, 10, 40}, m = 1e6) through torchjd's
  MGDA, CAGrad, UPGrad, IMTL-G, Aligned-MTL and Nash-MTL aggregators (torch
  CPU) and ours, with the largest difference between the two answers.
  Needs the ``perf`` extra; skipped with a note when torchjd is missing.
* ``modes``: a full training step (task gradients, method, Adam, apply) of the
  40-task CelebA-style CNN (5.2M shared parameters, batch 8) for linear
  scalarisation and ConicGrad in each mode of ``make_task_update``: time per
  step and XLA temporary memory of the compiled step, as ratios to linear
  scalarisation. Amortised modes are timed over whole cycles of N steps.

Usage:
  python -m benchmarks perf [--quick] [--parts aggregation,torchjd,modes] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import conicgrad_jax as cg
from benchmarks import models
from benchmarks import timing
from conicgrad_jax import linalg

PARTS = ("aggregation", "torchjd", "modes")


def _jacobian(k, m, seed):
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((k, m), dtype=np.float32)
  J[1:, : m // 2] -= 0.8 * J[0, : m // 2]
  return J


def _as_pytree(J):
  m = J.shape[1]
  cuts = np.cumsum([m // 2, m // 4, m // 8])
  return {f"leaf{i}": jnp.asarray(part) for i, part in enumerate(np.split(J, cuts, axis=1))}


def aggregation(ks, ms, rounds):
  rows = []
  for m in ms:
    for k in tqdm(ks, desc=f"aggregation m={m:.0e}"):
      J_np = _jacobian(k, m, seed=k)
      J, tree = jnp.asarray(J_np), _as_pytree(J_np)
      del J_np
      w = jnp.full((k,), 1.0 / k, jnp.float32)
      tx = cg.conicgrad(0.5, num_tasks=k)
      state = tx.init(None)
      hi = jax.lax.Precision.HIGHEST
      floor = jax.jit(lambda J, w: (jnp.matmul(J, J.T, precision=hi), jnp.matmul(w, J, precision=hi)))
      gram = jax.jit(lambda J: jnp.matmul(J, J.T, precision=hi))
      block = max(1, k // 4)
      upper = jax.jit(lambda J: linalg.upper_triangle_gram(J, block))
      update = jax.jit(lambda g, s: tx.update(g, s)[0])
      calls = {"floor": lambda: floor(J, w), "gram": lambda: gram(J),
               "upper_triangle_gram": lambda: upper(J), "conicgrad": lambda: update(tree, state)}
      times = timing.interleaved_times(calls, rounds, warmup=1)
      base = np.median(times["floor"])
      for name, t in times.items():
        rows.append({"part": "aggregation", "candidate": name, "K": k, "m": m,
                     **timing.summary(t), "ratio_to_floor": float(np.median(t) / base)})
  return rows


TORCHJD = {  # torchjd aggregator → (our method, our options that reproduce its conventions)
    "MGDA": ("mgda", {}), "CAGrad": ("cagrad", {"c": 0.5, "rescale": 0}),
    "UPGrad": ("upgrad", {}), "IMTLG": ("imtl_g", {}), "AlignedMTL": ("aligned_mtl", {}),
    "NashMTL": ("nash_mtl", {}),
}


def torchjd_part(ks, m, rounds):
  try:
    import torch
    from torchjd import aggregation as tjd
  except ImportError:
    print("torchjd part skipped: install the perf extra (see README).")
    return []
  import warnings
  warnings.filterwarnings("ignore", message=".*DPP.*")
  rows = []
  for k in tqdm(ks, desc="torchjd"):
    J_np = _jacobian(k, m, seed=100 + k)
    J, Jt = jnp.asarray(J_np), torch.from_numpy(J_np)
    calls, answers = {}, {}
    for agg_name, (ours, kwargs) in TORCHJD.items():
      agg = {"NashMTL": lambda: tjd.NashMTL(n_tasks=k),
             "CAGrad": lambda: tjd.CAGrad(c=0.5)}.get(agg_name, getattr(tjd, agg_name))()
      tx = cg.methods()[ours].factory(num_tasks=k, **kwargs)
      update = jax.jit(lambda g, s, tx=tx: tx.update(g, s)[0])
      state = tx.init(None)
      calls[f"torchjd:{agg_name}"] = lambda agg=agg: agg(Jt)
      calls[f"ours:{ours}"] = lambda update=update, state=state: update(J, state)
      answers[agg_name] = (np.asarray(agg(Jt)), np.asarray(update(J, state)))
    tx = cg.conicgrad(0.5, num_tasks=k)
    cstate = tx.init(None)
    cupdate = jax.jit(lambda g, s: tx.update(g, s)[0])
    calls["ours:conicgrad"] = lambda: cupdate(J, cstate)
    times = timing.interleaved_times(calls, rounds, warmup=1)
    for agg_name, (ours, _) in TORCHJD.items():
      t_theirs, t_ours = times[f"torchjd:{agg_name}"], times[f"ours:{ours}"]
      theirs, mine = answers[agg_name]
      rows.append({"part": "torchjd", "aggregator": agg_name, "ours": ours, "K": k, "m": m,
                   "torchjd_median_s": float(np.median(t_theirs)),
                   "ours_median_s": float(np.median(t_ours)),
                   "speedup": float(np.median(t_theirs) / np.median(t_ours)),
                   "max_abs_diff": float(np.max(np.abs(theirs - mine))),
                   "max_abs_update": float(np.max(np.abs(theirs)))})
    rows.append({"part": "torchjd", "aggregator": None, "ours": "conicgrad", "K": k, "m": m,
                 "ours_median_s": float(np.median(times["ours:conicgrad"]))})
  return rows


def modes_part(k, width, batch, rounds, every):
  params = models.init_params(k, width)
  images, labels = models.synthetic_batch(batch, k)
  adam = optax.adam(1e-3)
  shared = models.is_shared

  configs = {
      "stacked": dict(mode="stacked"),
      "chunked(8)": dict(mode="chunked", chunk_size=8),
      "gramian": dict(mode="gramian"),
      "representation": dict(mode="representation"),
      f"amortised(N={every}), stacked, lax.cond": dict(mode="stacked", every=every),
      f"amortised(N={every}), stacked, host schedule": dict(mode="stacked", every=every,
                                                            host=True),
      f"amortised(N={every}), representation, host schedule": dict(
          mode="representation", every=every, host=True),
  }
  # name -> (list of the step functions one cycle calls in order, initial state)
  steps = {"linear_scalarization": ([models.mean_loss_step(adam)], adam.init(params))}
  for name, cfg in configs.items():
    rep = cfg["mode"] == "representation"
    n_every = cfg.get("every", 1)
    method = cg.conicgrad(0.5, num_tasks=k,
                          shared=None if cfg["mode"] in ("gramian", "representation") else shared)
    init, task_update = models.task_update(
        method, mode=cfg["mode"], shared=None if rep else shared,
        chunk_size=cfg.get("chunk_size"), every=n_every, num_tasks=k if n_every > 1 else None)

    if cfg.get("host"):
      first = models.training_step(task_update.recompute, adam)
      rest = models.training_step(task_update.reuse, adam)
      cycle = [first] + [rest] * (n_every - 1)
    else:
      cycle = [models.training_step(task_update, adam)] * n_every
    steps[name] = (cycle, (init(params), adam.init(params)))

  rows, calls = [], {}
  for name, (cycle, state) in steps.items():
    compiled = {f: timing.compiled_call(f, params, state, images, labels)[0] for f in set(cycle)}
    temp = max(c.memory_analysis().temp_size_in_bytes for c in compiled.values())
    cycle = [compiled[f] for f in cycle]   # timed as compiled: no second compilation

    def call(cycle=cycle, state=state):
      p, s = params, state
      for f in cycle:
        p, s = f(p, s, images, labels)
      return p

    calls[name] = call
    rows.append({"part": "modes", "candidate": name, "K": k, "batch": batch,
                 "m_shared": models.count(params), "steps_per_call": len(cycle),
                 "temp_bytes": int(temp)})
  times = timing.interleaved_times(calls, rounds, warmup=1)
  base_t = np.median(times["linear_scalarization"])
  base_m = next(r["temp_bytes"] for r in rows if r["candidate"] == "linear_scalarization")
  for r in rows:
    t = times[r["candidate"]] / r["steps_per_call"]
    r.update(timing.summary(t), ratio_time_to_ls=float(np.median(t) / base_t),
             ratio_memory_to_ls=r["temp_bytes"] / base_m)
  return rows


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
  agg = [r for r in rows if r["part"] == "aggregation"]
  ax = axes[0]
  for m in sorted({r["m"] for r in agg}):
    for cand, style in (("conicgrad", "-o"), ("upper_triangle_gram", "--s")):
      pts = sorted((r["K"], r["ratio_to_floor"]) for r in agg
                   if r["m"] == m and r["candidate"] == cand)
      if pts:
        ax.plot(*zip(*pts), style, label=f"{cand}, m={m:.0e}")
  ax.axhline(1.0, color="k", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("K")
  ax.set_ylabel("time / BLAS floor (JJᵀ + wJ)")
  ax.set_title("Aggregation vs floor (float32)")
  ax.legend(fontsize=7)
  tj = [r for r in rows if r["part"] == "torchjd" and r.get("aggregator")]
  ax = axes[1]
  if tj:
    names = sorted({r["aggregator"] for r in tj})
    ks = sorted({r["K"] for r in tj})
    x = np.arange(len(names))
    for i, k in enumerate(ks):
      ax.bar(x + 0.8 * i / len(ks), [next(r["speedup"] for r in tj if r["aggregator"] == n
                                          and r["K"] == k) for n in names],
             width=0.8 / len(ks), label=f"K={k}")
    ax.set_xticks(x + 0.4 - 0.4 / len(ks), names, rotation=30)
    ax.set_yscale("log")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.legend()
  ax.set_ylabel("torchjd time / our time")
  ax.set_title(f"Same Jacobian, m = {tj[0]['m']:.0e}" if tj else "torchjd (not installed)")
  md = [r for r in rows if r["part"] == "modes"]
  ax = axes[2]
  if md:
    names = [r["candidate"] for r in md]
    y = np.arange(len(names))
    ax.barh(y - 0.2, [r["ratio_time_to_ls"] for r in md], height=0.4, label="time")
    ax.barh(y + 0.2, [r["ratio_memory_to_ls"] for r in md], height=0.4, label="temp memory")
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xscale("log")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.legend()
    ax.set_title(f"Training step, K={md[0]['K']}, m={md[0]['m_shared'] / 1e6:.1f}M")
  ax.set_xlabel("ratio to linear scalarisation")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks perf")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  parts = args.parts.split(",")
  for p in parts:
    if p not in PARTS:
      parser.error(f"unknown part {p!r}; choose from {PARTS}")
  rows = []
  if "aggregation" in parts:
    rows += (aggregation((2, 10), (100_000,), 2) if args.quick
             else aggregation((2, 10, 40, 128), (100_000, 1_000_000, 5_200_000), 5))
  if "torchjd" in parts:
    rows += torchjd_part((2, 10), 100_000, 2) if args.quick else torchjd_part((2, 10, 40),
                                                                              1_000_000, 5)
  if "modes" in parts:
    rows += (modes_part(8, 0.25, 2, 1, 4) if args.quick
             else modes_part(40, models.WIDTHS["5.2M"], 8, 3, 10))
  name = "perf_quick" if args.quick else "perf"
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump({"benchmark": "perf", "quick": args.quick, "machine": timing.machine(),
               "rows": rows}, f, indent=2)
  plot(rows, os.path.join(args.out, f"{name}.png"))
  for r in rows:
    print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()
           if k not in ("q25_s", "q75_s", "n")})
  return rows


if __name__ == "__main__":
  main()
