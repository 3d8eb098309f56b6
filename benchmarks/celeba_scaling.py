"""Scaling without CelebA: 40 binary tasks on synthetic 64×64 images, the 9-layer CNN at 5.2M–34.4M parameters.

Per method and model size: time per training step (stacked task gradients of
the shared encoder, the method, Adam, apply) and the XLA temporary memory of
the compiled step, as ratios to linear scalarisation's ordinary training step
(one backward pass of the mean loss) measured in the same run, plus absolute
values. Images are Gaussian noise; each task's label thresholds a fixed random
linear feature of the image, so the tasks are learnable (the cost does not
depend on the labels). The model is :mod:`benchmarks.models` (channel widths
scaled for ≈ 5.2M, 10M, 20M, 34.4M encoder parameters).

Methods that need per-task gradients (every Gram weighting and the
Jacobian methods) are timed in ``make_task_update``'s default ``"stacked"``
mode: the K gradients of the shared encoder, then the method. Methods whose
weights depend on the losses alone (:data:`LOSS_ONLY`: FAMO, UW, DWA, …) are
timed as they are meant to run, in ``"representation"`` mode: weights from the
losses, then one backward pass of Σ_k w_k L_k (the same update as the stacked
path for them; tested in ``tests/test_benchmarks.py``).

Full run: every method at 5.2M, and linear scalarisation, ConicGrad, MGDA and
FAMO at all four sizes (the Gram methods share the stacked-gradient cost that
dominates; the aggregation benchmark separates their solvers), batch 8, three
timed rounds after two warm-up rounds. ``--quick``: two tiny widths, ConicGrad and
FAMO, batch 2.

Usage:
  python -m benchmarks celeba_scaling [--methods a,b] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import optax
from tqdm import tqdm

import conicgrad_jax as cg
from benchmarks import models
from benchmarks import store as store_m
from benchmarks import timing

K = 40
ALL_SIZES_METHODS = ("conicgrad", "mgda", "famo", "sdmgrad")
# Weights from the losses alone (no gradient enters them): one backward pass suffices.
LOSS_ONLY = tuple(name for name, info in cg.methods().items()
                  if info.loss_only and name != "linear_scalarization")


def task_step(name, num_tasks, optimiser):
  """A jitted training step ``(params, (method state, Adam state), x, y) -> (params, state)``."""
  if name in LOSS_ONLY:
    task = models.task_update(cg.methods()[name].factory(num_tasks=num_tasks),
                              mode="representation")
  else:
    task = models.task_update(cg.methods()[name].factory(num_tasks=num_tasks),
                              shared=models.is_shared)
  return models.training_step(task.step, optimiser), lambda p: (task.init(p), optimiser.init(p))


def measure(size_name, width, method_names, batch, rounds):
  params = models.init_params(K, width)
  images, labels = models.synthetic_batch(batch, K)
  adam = optax.adam(1e-3)
  steps = {"linear_scalarization (one backward)": (models.mean_loss_step(adam),
                                                   adam.init(params))}
  modes = {"linear_scalarization (one backward)": "jax.grad of the mean"}
  for name in method_names:
    fn, init = task_step(name, K, adam)
    label = f"{name} (one backward)" if name in LOSS_ONLY else name
    steps[label] = (fn, init(params))
    modes[label] = "representation" if name in LOSS_ONLY else "stacked"
  rows, calls = [], {}
  for name, (fn, state) in steps.items():
    compiled, calls[name] = timing.compiled_call(fn, params, state, images, labels)
    temp = compiled.memory_analysis().temp_size_in_bytes
    rows.append({"size": size_name, "m_shared": models.count(params), "method": name,
                 "mode": modes[name],
                 "batch": batch, "temp_bytes": int(temp)})
  times = timing.interleaved_times(calls, rounds)
  base = "linear_scalarization (one backward)"
  base_t, base_m = np.median(times[base]), rows[0]["temp_bytes"]
  for r in rows:
    r.update(timing.summary(times[r["method"]]),
             time_ratio_to_ls=float(np.median(times[r["method"]]) / base_t),
             memory_ratio_to_ls=r["temp_bytes"] / base_m)
  return rows


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  methods = sorted({r["method"] for r in rows})
  for name in methods:
    pts = sorted((r["m_shared"], r["median_s"], r["temp_bytes"]) for r in rows
                 if r["method"] == name)
    if len(pts) < 2:
      continue
    m, t, b = zip(*pts)
    axes[0].plot(np.array(m) / 1e6, t, "-o", label=name)
    axes[1].plot(np.array(m) / 1e6, np.array(b) / 2**20, "-o", label=name)
  axes[0].set_ylabel("seconds per training step")
  axes[1].set_ylabel("XLA temporary memory of the step (MiB)")
  for ax in axes:
    ax.set_xlabel("shared parameters (millions)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
  fig.suptitle(f"40-task CNN, CPU ({os.cpu_count()} cores), batch {rows[0]['batch']}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def markdown_table(rows) -> str:
  lines = ["| size (shared params) | method | mode | s/step | × LS | temp MiB | × LS |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['size']} ({r['m_shared'] / 1e6:.1f}M) | {r['method']} | {r['mode']} "
                 f"| {r['median_s']:.3f} | {r['time_ratio_to_ls']:.2f} "
                 f"| {r['temp_bytes'] / 2**20:.1f} | {r['memory_ratio_to_ls']:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks celeba_scaling")
  parser.add_argument("--methods", default=None, help="comma-separated; default: all")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  names = args.methods.split(",") if args.methods else sorted(
      n for n in cg.methods() if n != "linear_scalarization")
  if args.quick:
    quick_names = names if args.methods else ["conicgrad", "famo"]
    plan = {"tiny-a": (0.1, quick_names), "tiny-b": (0.2, quick_names)}
    batch, rounds = 2, 2
  else:
    plan = {size: (width, names if size == "5.2M" else
                   [n for n in names if n in ALL_SIZES_METHODS])
            for size, width in models.WIDTHS.items()}
    batch, rounds = 8, 3
  tag = "celeba_scaling_quick" if args.quick else "celeba_scaling"
  runs = store_m.RunStore(args.out, tag)
  rows = []
  for size, (width, methods) in tqdm(plan.items(), desc="sizes"):
    rows += runs.run(f"{size}_{'-'.join(methods)}_b{batch}_r{rounds}",
                     lambda width=width, methods=methods, size=size: {
                         "rows": measure(size, width, methods, batch, rounds)},
                     current_library_only=True)["rows"]
  with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
    json.dump({"benchmark": "celeba_scaling", "quick": args.quick, "K": K,
               "machine": timing.machine(), "rows": rows}, f, indent=1)
  plot(rows, os.path.join(args.out, f"{tag}.png"))
  with open(os.path.join(args.out, f"{tag}.md"), "w") as f:
    f.write(markdown_table(rows) + "\n")
  print(f"{'size':<7} {'method':<38} {'s/step':>8} {'x LS':>6} {'temp MiB':>9} {'x LS':>6}")
  for r in rows:
    print(f"{r['size']:<7} {r['method']:<38} {r['median_s']:8.3f} {r['time_ratio_to_ls']:6.2f} "
          f"{r['temp_bytes'] / 2**20:9.1f} {r['memory_ratio_to_ls']:6.2f}")
  return rows


if __name__ == "__main__":
  main()
