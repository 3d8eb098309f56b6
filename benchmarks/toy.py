"""The two-task toy of the ConicGrad paper's Figure 1, for every method of the library.

Protocol (the reference code's): first loss × 0.1, five starts, Adam lr 1e-3,
35,000 steps, each method chained before Adam with its defaults and
``num_tasks=2``; loss-based methods get the losses of the current point. A run
*reaches the global minimum* when its final mean loss is within 0.01 of the
minimum of the mean loss (−10.1037, by grid search and Adam refinement); the
first step within that tolerance is read from the mean loss recorded every 50
steps. Also: ConicGrad for c ∈ {0.1, 0.25, 0.5, 0.75, 0.9}; since ConicGrad's c is
swept, the main trade-off parameter of the baselines that have one is swept on a
five-point grid too (``BASELINE_SWEEPS``: CAGrad's c on the same grid — the same role
as ConicGrad's c — FairGrad's α, SDMGrad's λ, GradNorm's α and DWA's temperature);
the comparison table uses every
method's defaults (ConicGrad c = 0.5), fixed before any sweep. And a preference
sweep (p, 1 − p), p ∈ {0.05, …, 0.95}, from the start (0, 0) for ConicGrad and
the preference-aware baselines (UPGrad, DualProj, Aligned-MTL, ConFIG, linear
scalarisation with weights p), each compared with the true Pareto front (the distance
in loss space to the polyline through 400 points of it). FAMO also runs with the settings
of its reference code's toy trainer (``REFERENCE_TOY_SETTINGS``). Stored runs made by
another version of the library are computed again.

Usage:
  python -m benchmarks toy [--methods a,b] [--steps 35000] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import conicgrad_jax as cg
from benchmarks import store as store_m
from benchmarks import timing

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import toy as toy_ex  # noqa: E402

RECORD_EVERY = 50
C_SWEEP = (0.1, 0.25, 0.5, 0.75, 0.9)
BASELINE_SWEEPS = {"cagrad": ("c", C_SWEEP),
                   "fairgrad": ("alpha", (0.5, 1.0, 2.0, 5.0, 10.0)),
                   "sdmgrad": ("lamda", (0.1, 0.3, 0.5, 0.75, 0.9)),
                   "gradnorm": ("alpha", (0.5, 1.0, 1.5, 2.0, 3.0)),
                   "dwa": ("temperature", (0.5, 1.0, 2.0, 5.0, 10.0))}
# Methods whose reference code runs the toy with settings other than its defaults: FAMO's
# toy trainer bounds the losses below by (−21·0.1, −21) and drops the logits' decay.
REFERENCE_TOY_SETTINGS = {"famo": {"min_losses": (-2.1, -21.0), "gamma": 0.0}}
PREFERENCES = tuple(np.round(np.linspace(0.05, 0.95, 7), 3))
QUICK_METHODS = ("linear_scalarization", "conicgrad", "famo", "cagrad")
PREFERENCE_METHODS = ("conicgrad", "upgrad", "dualproj", "aligned_mtl", "config",
                      "linear_scalarization")


def make_method(name, **kwargs):
  return cg.methods()[name].factory(num_tasks=2, **kwargs)


def run_starts(method, steps, starts):
  """Trajectories (T, S, 2), mean-loss curve (T, S) and final losses (S, 2) from each start."""
  opt = optax.chain(method, optax.adam(1e-3))
  task_grads = cg.value_and_task_grads(toy_ex.toy_losses)

  def one_start(x0):
    def step(carry, _):
      x, s = carry
      losses, g = task_grads(x)
      u, s = opt.update(g, s, x, losses=losses)
      return (optax.apply_updates(x, u), s), x

    def chunk(carry, _):
      carry, xs = jax.lax.scan(step, carry, None, length=RECORD_EVERY)
      return carry, xs[0]

    (x, _), path = jax.lax.scan(chunk, (x0, opt.init(x0)), None, length=steps // RECORD_EVERY)
    path = jnp.concatenate([path, x[None]])
    return path, jax.vmap(lambda p: jnp.mean(toy_ex.toy_losses(p)))(path), toy_ex.toy_losses(x)

  paths, curves, final = jax.jit(jax.vmap(one_start))(jnp.asarray(starts))
  return (np.asarray(paths).transpose(1, 0, 2), np.asarray(curves).T, np.asarray(final))


def summarise(paths, curves, final, best, tol=toy_ex.REACHED_TOL):
  per_start = []
  for i in range(final.shape[0]):
    within = np.nonzero(curves[:, i] - best <= tol)[0]
    reached = bool(final[i].mean() - best <= tol)
    per_start.append({
        "start": toy_ex.STARTS[i].tolist(), "final_losses": final[i].tolist(),
        "final_mean_loss": float(final[i].mean()), "reached_global_minimum": reached,
        "first_step_within_tol": int(within[0] * RECORD_EVERY) if reached and within.size else None,
        "final_x": paths[-1, i].tolist()})
  return {"reached": sum(s["reached_global_minimum"] for s in per_start), "starts": per_start,
          "path": paths[:: max(1, paths.shape[0] // 200)].tolist(),
          "mean_curve": curves.mean(1)[:: max(1, curves.shape[0] // 200)].tolist()}


def distance_to_front(point, front):
  """Distance from ``point`` to the polyline through the front's points (its segments,
  not only its vertices, which lie up to 0.1 apart in loss space)."""
  a, b = front[:-1], front[1:]
  ab = b - a
  t = np.clip(np.sum((np.asarray(point) - a) * ab, axis=1)
              / np.maximum(np.sum(ab * ab, axis=1), np.finfo(np.float64).tiny), 0.0, 1.0)
  return float(np.min(np.linalg.norm(a + t[:, None] * ab - np.asarray(point), axis=1)))


def true_front(n=400):
  """The Pareto front in loss space: the losses along the Pareto set x2 = −8.3552, x1 ∈ [−7, 7]."""
  x1 = np.linspace(-7, 7, n)
  pts = jnp.asarray(np.stack([x1, np.full(n, toy_ex.PARETO_X2)], 1), jnp.float32)
  return np.asarray(jax.vmap(toy_ex.toy_losses)(pts))


def plot_methods(results, best_x, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = list(results)
  cols = 6
  rows = -(-len(names) // cols)
  g1, g2 = np.meshgrid(np.linspace(-10, 10, 200), np.linspace(-10, 10, 200))
  pts = jnp.asarray(np.stack([g1.ravel(), g2.ravel()], 1), jnp.float32)
  mean = np.asarray(jax.vmap(lambda x: jnp.mean(toy_ex.toy_losses(x)))(pts)).reshape(g1.shape)
  fig, axes = plt.subplots(rows, cols, figsize=(3.1 * cols, 3.0 * rows), squeeze=False)
  colors = plt.cm.viridis(np.linspace(0.05, 0.9, len(toy_ex.STARTS)))
  for ax in axes.ravel():
    ax.axis("off")
  for ax, name in zip(axes.ravel(), names):
    ax.axis("on")
    r = results[name]
    p = np.asarray(r["path"])
    ax.contourf(g1, g2, mean, levels=30, cmap="Greys_r", alpha=0.85)
    ax.plot([-7, 7], [toy_ex.PARETO_X2] * 2, color="tab:red", lw=2)
    for i, color in enumerate(colors):
      ax.plot(p[:, i, 0], p[:, i, 1], color=color, lw=1.2)
      ax.scatter(*p[-1, i], color=color, marker="*", s=50, edgecolor="k", zorder=4)
    ax.scatter(*best_x, color="gold", marker="X", s=60, edgecolor="k", zorder=5)
    ax.set_title(f"{name} ({r['reached']}/5)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_convergence(results, best, steps, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(8, 5))
  for name, r in results.items():
    curve = np.asarray(r["mean_curve"]) - best
    x = np.linspace(0, steps, len(curve))
    ax.plot(x, np.maximum(curve, 1e-4), lw=2.2 if name.startswith("conicgrad") else 0.9,
            label=name)
  ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_ylabel("mean over starts of (mean loss − global minimum)")
  ax.legend(fontsize=6, ncol=3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_preferences(pref, front, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6.5, 5))
  ax.plot(front[:, 0], front[:, 1], color="k", lw=2, label="true Pareto front")
  markers = "osD^vP"
  for (name, rows), mk in zip(pref.items(), markers):
    ls = np.array([r["final_losses"] for r in rows])
    ax.scatter(ls[:, 0], ls[:, 1], marker=mk, s=40, label=name, alpha=0.8)
  ax.set_xlabel("loss 1 (× 0.1)")
  ax.set_ylabel("loss 2")
  ax.set_title("Preference sweep p ∈ [0.05, 0.95] from (0, 0)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks toy")
  parser.add_argument("--methods", default=None, help="comma-separated; default: all")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  steps = args.steps or (500 if args.quick else 35_000)
  names = (args.methods.split(",") if args.methods
           else list(QUICK_METHODS) if args.quick else sorted(cg.methods()))
  unknown = set(names) - set(cg.methods())
  if unknown:
    parser.error(f"unknown methods {sorted(unknown)}")
  name = "toy_quick" if args.quick else "toy"
  runs = store_m.RunStore(args.out, f"{name}_steps{steps}")
  best, best_x = toy_ex.global_minimum_of_mean_loss()

  def job(method_name, **kwargs):
    def compute():
      paths, curves, final = run_starts(make_method(method_name, **kwargs), steps, toy_ex.STARTS)
      return summarise(paths, curves, final, best)
    return compute

  results = {}
  for n in tqdm(names, desc="methods"):
    results[n] = runs.run(n, job(n), current_library_only=True)
  def run_sweep(n, arg, grid):
    return {f"{n}({arg}={v})": runs.run(f"{n}_{arg}{v}", job(n, **{arg: v}),
                                        current_library_only=True)
            for v in tqdm(grid, desc=f"{n} {arg} sweep")}

  sweep = run_sweep("conicgrad", "c", C_SWEEP if not args.quick else (0.25,))
  baseline_sweeps = {}
  for n, (arg, grid) in BASELINE_SWEEPS.items():
    if n in names:
      baseline_sweeps.update(run_sweep(n, arg, grid if not args.quick else grid[:1]))
  reference_settings = {
      f"{n}(reference toy settings)": runs.run(
          f"{n}_reference_toy_settings_" + "_".join(f"{k}{v}" for k, v in sorted(kwargs.items())),
          job(n, **kwargs), current_library_only=True)
      for n, kwargs in REFERENCE_TOY_SETTINGS.items() if n in names}
  pref = {}
  for n in tqdm([m for m in PREFERENCE_METHODS if m in names or not (args.methods or args.quick)],
                desc="preference sweep"):
    rows = []
    for p in (PREFERENCES if not args.quick else PREFERENCES[::6]):
      w = jnp.asarray([p, 1 - p], jnp.float32)
      kwargs = {"weights": w} if n == "linear_scalarization" else {"preference": w}

      def compute(n=n, kwargs=kwargs, p=p):
        paths, _, final = run_starts(make_method(n, **kwargs), steps, toy_ex.STARTS[1:2])
        return {"p": float(p), "final_losses": final[0].tolist(), "final_x": paths[-1, 0].tolist()}

      rows.append(runs.run(f"pref_{n}_{p}", compute, current_library_only=True))
    pref[n] = rows
  front = true_front()
  for rows in pref.values():
    for r in rows:   # distance in loss space to the true front
      r["distance_to_front"] = distance_to_front(r["final_losses"], front)
  out = {"benchmark": "toy", "quick": args.quick, "steps": steps, "tolerance": toy_ex.REACHED_TOL,
         "global_minimum": best, "argmin": best_x.tolist(), "machine": timing.machine(),
         "methods": {n: {k: v for k, v in r.items() if k != "path"} for n, r in results.items()},
         "c_sweep": {n: {k: v for k, v in r.items() if k != "path"} for n, r in sweep.items()},
         "baseline_sweeps": {n: {k: v for k, v in r.items() if k != "path"}
                             for n, r in baseline_sweeps.items()},
         "reference_settings": {n: {k: v for k, v in r.items() if k != "path"}
                                for n, r in reference_settings.items()},
         "preference_sweep": pref, "library": store_m.library_fingerprint()}
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump(out, f, indent=1)
  plot_methods({**results, **sweep}, best_x, os.path.join(args.out, f"{name}.png"))
  plot_convergence({**results, **sweep}, best, steps,
                   os.path.join(args.out, f"{name}_convergence.png"))
  plot_preferences(pref, front, os.path.join(args.out, f"{name}_preference.png"))
  print(f"{'method':<26} reached  first steps within {toy_ex.REACHED_TOL} (per start)")
  for n, r in {**results, **sweep, **baseline_sweeps, **reference_settings}.items():
    print(f"{n:<26} {r['reached']}/5     "
          f"{[s['first_step_within_tol'] for s in r['starts']]}")
  for n, rows in pref.items():
    print(f"preference {n:<22} max distance to front "
          f"{max(r['distance_to_front'] for r in rows):.4f}")
  return out


if __name__ == "__main__":
  main()
