"""The shared protocol of the supervised benchmarks: train every method alike, select on validation, summarise.

Every method is chained before Adam with its defaults (``shared`` and
``num_tasks`` set), trained for the same epochs, batch size, learning rate and
seeds; each training step is one jitted call. After each
epoch the validation losses are measured; the reported test metrics are those
of the epoch with the lowest validation loss (sum over tasks). Single-task
baselines (STL) train the same model with the weights e_k (only task k's
gradient reaches the shared encoder) and report task k's metric.

Summary metrics: Δm% = (1/K) Σ_k (−1)^{δ_k} (M_k − M_STL,k)/M_STL,k · 100 with
δ_k = 1 when higher is better (lower Δm% is better), and the mean rank of each
method over all task metrics (1 = best).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import conicgrad_jax as cg
from benchmarks import store as store_m
from benchmarks import timing

QUICK_METHODS = ("linear_scalarization", "conicgrad")


class Task(NamedTuple):
  """A supervised multi-task benchmark."""
  name: str
  task_names: tuple
  higher_is_better: tuple
  metric_name: str
  init_params: Callable[[int], Any]                 # seed -> params
  task_losses: Callable[[Any, Any, Any], jax.Array]  # (params, x, y) -> (K,)
  metrics: Callable[[Any, Any, Any], jax.Array]      # (params, x, y) -> (K,) test metrics
  is_shared: Callable
  data: tuple                                        # (train, val, test), each (x, y)


class Protocol(NamedTuple):
  epochs: int
  batch_size: int
  lr: float


def make_method(name: str, k: int, is_shared, seed: int = 0):
  """The method ``name`` for K tasks; a method that draws random numbers draws them
  from ``seed`` (the run's)."""
  if name.startswith("stl_"):
    i = int(name.split("_")[1])
    return cg.linear_scalarization(weights=jnp.eye(k)[i], shared=is_shared, num_tasks=k)
  factory = cg.methods()[name].factory
  kwargs = {"seed": seed} if "seed" in inspect.signature(factory).parameters else {}
  return factory(shared=is_shared, num_tasks=k, **kwargs)


def make_step(task: Task, method_name: str, protocol: Protocol, seed: int = 0):
  """The jitted training step ``(params, state, x, y) -> (params, state, losses)`` and its init."""
  k = len(task.task_names)
  opt = optax.chain(make_method(method_name, k, task.is_shared, seed), optax.adam(protocol.lr))
  grads_fn = cg.value_and_task_grads(task.task_losses, shared=task.is_shared)

  @jax.jit
  def step(p, s, x, y):
    losses, g = grads_fn(p, x, y)
    u, s = opt.update(g, s, p, losses=losses)
    return optax.apply_updates(p, u), s, losses

  return step, opt.init


def train_and_evaluate(task: Task, method_name: str, seed: int, protocol: Protocol) -> dict:
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = task.data
  params = task.init_params(seed)
  step, init = make_step(task, method_name, protocol, seed)
  opt_state = init(params)

  def epoch(p, s, xs, ys):
    # A Python loop over one jitted step: XLA:CPU runs the convolutions of a
    # lax.scan body many times slower than the same step jitted on its own
    # (docs/performance.md, "Branches and loops on XLA:CPU").
    losses = []
    for x, y in zip(xs, ys):
      p, s, l = step(p, s, x, y)
      losses.append(l)
    return p, s, jnp.mean(jnp.stack(losses), axis=0)

  eval_losses = jax.jit(task.task_losses)
  eval_metrics = jax.jit(task.metrics)
  rng = np.random.default_rng(seed)
  n_batches = len(x_tr) // protocol.batch_size
  best = (np.inf, None, None, -1)
  step_times, history = [], []
  for e in range(protocol.epochs):
    order = rng.permutation(len(x_tr))[: n_batches * protocol.batch_size]
    shape = (n_batches, protocol.batch_size)
    xs = x_tr[order].reshape(shape + x_tr.shape[1:])
    ys = y_tr[order].reshape(shape + y_tr.shape[1:])
    t0 = time.perf_counter()
    params, opt_state, train_losses = epoch(params, opt_state, xs, ys)
    train_losses = np.asarray(train_losses)
    if e > 0:                                          # epoch 0 includes compilation
      step_times.append((time.perf_counter() - t0) / n_batches)
    val = np.asarray(eval_losses(params, x_va, y_va))
    history.append({"epoch": e, "train_losses": train_losses.tolist(), "val_losses": val.tolist()})
    score = float(np.sum(val)) if np.all(np.isfinite(val)) else np.inf
    if score < best[0] or best[1] is None:
      best = (score, np.asarray(eval_metrics(params, x_te, y_te)).tolist(), val.tolist(), e)
  return {"method": method_name, "seed": seed, "test_metrics": best[1],
          "best_val_losses": best[2], "best_epoch": best[3], "history": history,
          "time_per_step_s": float(np.median(step_times)) if step_times else None}


def side_by_side_step_times(task: Task, method_names, protocol: Protocol, rounds: int) -> dict:
  """Seconds per training step of every method, timed side by side on one batch.

  The training runs happen one after another under whatever else the machine is
  doing; these interleaved rounds (after one warm-up) give the time column its
  ratios to linear scalarisation.
  """
  (x_tr, y_tr), _, _ = task.data
  x, y = x_tr[:protocol.batch_size], y_tr[:protocol.batch_size]
  params = task.init_params(0)
  calls = {}
  for m in tqdm(method_names, desc=f"{task.name} step times (compiling)"):
    step, init = make_step(task, m, protocol)
    _, calls[m] = timing.compiled_call(step, params, init(params), x, y)
  times = timing.interleaved_times(calls, rounds, warmup=1)
  return {m: timing.summary(t) for m, t in times.items()}


def run_all(task: Task, method_names, seeds, protocol: Protocol, runs) -> dict:
  """Every method × seed (and the STL runs), resumable through ``runs`` (a RunStore)."""
  k = len(task.task_names)
  jobs = [(m, s) for m in list(method_names) + [f"stl_{i}" for i in range(k)] for s in seeds]
  results = {}
  for m, s in tqdm(jobs, desc=task.name):
    results[m, s] = runs.run(f"{m}_seed{s}", lambda m=m, s=s: train_and_evaluate(
        task, m, s, protocol))
  return results


def mean_ranks(means, higher_is_better) -> np.ndarray:
  """Each method's rank on every task metric, averaged over the metrics.

  ``means``: (methods, K) metrics; rank 1 is best on a metric. Tied methods share
  the mean of the ranks they span (e.g. two tied for first both get 1.5). A NaN
  metric (a diverged run) ranks last on that metric.
  """
  means = np.asarray(means, np.float64)
  ranks = np.zeros_like(means)
  for i, higher in enumerate(higher_is_better):
    score = -means[:, i] if higher else means[:, i]
    score = np.where(np.isnan(score), np.inf, score)   # a missing metric ranks last
    for j, v in enumerate(score):
      below, equal = np.sum(score < v), np.sum(score == v)
      ranks[j, i] = below + (equal + 1) / 2.0
  return ranks.mean(axis=1)


def standard_error(values):
  """The standard error of the mean over seeds (axis 0): a float for a vector, a list
  for a (seeds, K) matrix; None for a single seed, whose spread is unknown."""
  values = np.asarray(values, np.float64)
  if values.shape[0] < 2:
    return None
  sem = values.std(axis=0, ddof=1) / np.sqrt(values.shape[0])
  return float(sem) if sem.ndim == 0 else sem.tolist()


def plus_minus(mean, sem, mean_format="{:.4g}", sem_format="{:.2g}") -> str:
  """"mean ± sem", or the mean alone when the standard error is unknown (one seed)."""
  text = mean_format.format(mean)
  return text if sem is None else f"{text} ± {sem_format.format(sem)}"


def error_bars(rows) -> list:
  """``delta_m_sem`` of each row for a bar chart's xerr (NaN: no bar for one seed)."""
  return [np.nan if r["delta_m_sem"] is None else r["delta_m_sem"] for r in rows]


def summarise(task: Task, results: dict, method_names, seeds, times=None) -> dict:
  """Metrics, Δm% and mean rank; the time column from ``times`` (side by side) when given."""
  k = len(task.task_names)
  sign = np.array([-1.0 if h else 1.0 for h in task.higher_is_better])
  stl = np.array([np.mean([results[f"stl_{i}", s]["test_metrics"][i] for s in seeds])
                  for i in range(k)])
  rows = {}
  for m in method_names:
    metrics = np.array([results[m, s]["test_metrics"] for s in seeds])      # (seeds, K)
    delta = 100.0 * np.mean(sign * (metrics - stl) / np.abs(stl), axis=1)   # per seed
    in_run = [results[m, s]["time_per_step_s"] for s in seeds
              if results[m, s]["time_per_step_s"] is not None]
    rows[m] = {"mean": metrics.mean(0).tolist(), "sem": standard_error(metrics),
               "delta_m_pct": float(delta.mean()), "delta_m_sem": standard_error(delta),
               "time_per_step_in_runs_s": float(np.median(in_run)) if in_run else None,
               "time_per_step_s": (times[m]["median_s"] if times is not None
                                   else float(np.median(in_run)) if in_run else None)}
  names = list(rows)
  ranks = mean_ranks([rows[m]["mean"] for m in names], task.higher_is_better)
  base = rows.get("linear_scalarization", {}).get("time_per_step_s")
  for m, r in zip(names, ranks):
    rows[m]["mean_rank"] = float(r)
    t = rows[m]["time_per_step_s"]
    rows[m]["time_ratio_to_ls"] = t / base if (t and base) else None
  return {"stl": stl.tolist(), "methods": rows}


def markdown_table(task: Task, summary: dict) -> str:
  head = ("| method | " + " | ".join(f"{t} ({task.metric_name})" for t in task.task_names)
          + " | Δm% ↓ | mean rank ↓ | ms/step (× LS) |")
  lines = [head, "|" + "---|" * (len(task.task_names) + 4)]
  lines.append("| STL | " + " | ".join(f"{v:.4g}" for v in summary["stl"]) + " | 0 | — | — |")
  order = sorted(summary["methods"].items(), key=lambda kv: kv[1]["delta_m_pct"])
  for m, r in order:
    cells = [plus_minus(mu, se) for mu, se in zip(r["mean"], r["sem"] or [None] * len(r["mean"]))]
    ratio = (f"{1e3 * r['time_per_step_s']:.1f} ({r['time_ratio_to_ls']:.2f}×)"
             if r["time_ratio_to_ls"] else "—")
    dm = plus_minus(r["delta_m_pct"], r["delta_m_sem"], "{:.2f}", "{:.2f}")
    lines.append(f"| {m} | " + " | ".join(cells) + f" | {dm} | {r['mean_rank']:.1f} | {ratio} |")
  return "\n".join(lines)


def delta_m_bars(ax, summary: dict, xlabel: str):
  """Horizontal Δm% bars (± s.e.), best first, ConicGrad highlighted."""
  order = sorted(summary["methods"].items(), key=lambda kv: kv[1]["delta_m_pct"])
  y = np.arange(len(order))
  ax.barh(y, [r["delta_m_pct"] for _, r in order], xerr=error_bars(r for _, r in order),
          color=["tab:red" if m == "conicgrad" else "tab:blue" for m, _ in order])
  ax.set_yticks(y, [m for m, _ in order], fontsize=8)
  ax.invert_yaxis()
  ax.axvline(0.0, color="k", lw=0.8)
  ax.set_xlabel(xlabel)


def plot(task: Task, summary: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 0.28 * len(summary["methods"]) + 1.5))
  delta_m_bars(ax, summary,
               "Δm% vs single-task baselines (lower is better), mean ± s.e. over seeds")
  ax.set_title(task.name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def parse_args(name: str, argv=None):
  """The command line every supervised benchmark shares; returns (args, method names)."""
  parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}")
  parser.add_argument("--methods", default=None, help="comma-separated; default: all")
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--epochs", type=int, default=None)
  parser.add_argument("--lr", type=float, default=None, help="Adam's learning rate")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  parser.add_argument("--protocol", choices=("short", "converged"), default="short",
                      help="short: the fixed budget above; converged: train to a validation "
                           "plateau (benchmarks/converged.py)")
  from benchmarks import converged
  converged.add_arguments(parser)
  args = parser.parse_args(argv)
  methods = (args.methods.split(",") if args.methods
             else list(QUICK_METHODS) if args.quick else sorted(cg.methods()))
  unknown = set(methods) - set(cg.methods())
  if unknown:
    parser.error(f"unknown methods {sorted(unknown)}")
  return args, methods


def run_benchmark(task: Task, args, methods, protocol: Protocol) -> dict:
  """Runs (resumably), summarises, and writes NAME.json, NAME.png and the README table."""
  seeds = tuple(range(min(args.seeds, 1) if args.quick else args.seeds))
  tag = f"{task.name}_quick" if args.quick else task.name
  n_train = len(task.data[0][0])
  # The protocol names the folder of per-run results, so a rerun with other epochs,
  # batch size, learning rate or training-set size never resumes from stale runs.
  runs = store_m.RunStore(args.out, f"{tag}_e{protocol.epochs}_b{protocol.batch_size}"
                          f"_lr{protocol.lr:g}_n{n_train}")
  results = run_all(task, methods, seeds, protocol, runs)
  rounds = 3 if args.quick else 10
  # Stored times are reused only when they cover every method asked for (all timed together).
  times = runs.get(f"step_times_rounds{rounds}")
  if times is None or not set(methods) <= set(times):
    times = runs.put(f"step_times_rounds{rounds}",
                     side_by_side_step_times(task, methods, protocol, rounds))
  summary = summarise(task, results, methods, seeds, times)
  (x_tr, _), (x_va, _), (x_te, _) = task.data
  with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
    json.dump({"benchmark": task.name, "quick": args.quick, "protocol": protocol._asdict(),
               "sizes": {"train": len(x_tr), "val": len(x_va), "test": len(x_te)},
               "seeds": list(seeds), "machine": timing.machine(),
               "library": store_m.library_fingerprint(),
               "runs_from_other_library_versions": runs.from_other_libraries(),
               **summary}, f, indent=1)
  plot(task, summary, os.path.join(args.out, f"{tag}.png"))
  table = markdown_table(task, summary)
  with open(os.path.join(args.out, f"{tag}.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return summary
