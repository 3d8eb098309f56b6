"""Performance against the hardware floor, against torchjd, and per training-step mode.

Nine parts, each timed in interleaved rounds (medians; ratios within one run):

* ``aggregation``: ConicGrad's update (Gram + solve + combine on a 4-leaf
  pytree) for K ∈ {2, 10, 40, 128} × m ∈ {1e5, 1e6, 5.2e6}, float32, against
  the BLAS floor on the same data as one K×m array (``J @ J.T`` then
  ``w @ J``), the plain Gram ``J @ J.T`` and the upper-triangle blocked Gram.
* ``torchjd``: the same Jacobians (K ∈ {2, 10, 40}, m = 1e6) through torchjd's
  MGDA, CAGrad, UPGrad, IMTL-G, Aligned-MTL and Nash-MTL aggregators (torch
  CPU) and ours, with the largest difference between the two answers, and
  the Gram matrix ``J @ J.T`` alone in torch against XLA:CPU.
  Needs the ``perf`` extra; skipped with a note when torchjd is missing.
* ``task_grads``: ``value_and_task_grads`` with ``strategy="loop"`` (K VJP
  calls) against ``"vmap"`` on the CelebA-like CNN (width 0.25, batch 8) for
  K ∈ {2, 6, 10}: step time and compile time.
* ``modes``: a full training step (task gradients, method, Adam, apply) for
  linear scalarisation and ConicGrad in each mode of ``make_task_update``
  (stacked by loop and by vmap, chunked and gramian unrolled and looped
  (``lax.map``/``lax.scan``), representation, the reuse step alone,
  amortised with a host schedule and with ``lax.cond``): time per step and
  XLA temporary memory of the compiled step, as ratios to linear
  scalarisation and to the stacked step, and compile times, on the
  CelebA-like CNN at width 0.25 with K = 6 tasks, batch 8, N = 4; also the
  looped and branched forms with their convolutions as autodiff wrote them
  (``canonical_convolutions=False``), which XLA:CPU runs many times slower;
  and the same without the as-traced forms on a 3-task CNN over 15 rounds.
  Amortised modes are timed over whole cycles of N steps.
* ``modes_large``: the same candidates, without the as-traced forms, on the
  40-task, 5.2M-parameter model of ``celeba_scaling`` (batch 8, N = 10, 3
  rounds).
* ``compile``: compile time of ``jax.jit(method.update)`` at K = 10 on a
  two-leaf pytree (ConicGrad with and without warm start, MGDA, UPGrad,
  IMTL-G, linear scalarisation; wall and process-CPU seconds, the trace and
  lowering alone, and the number of fused kernels XLA generated code for),
  each with XLA's default options and with
  :data:`FAST_COMPILE`; a ConicGrad training step of the CNN compiled
  both ways, timed side by side; and ConicGrad's update compiled in a fresh
  process and then in another that reads JAX's persistent compilation cache.
* ``compile_stages``: where ConicGrad's compile time goes: its cold update at
  K = 10 compiled whole, without the crossover, and without the crossover
  and the interior-point phase (stand-ins return their start point), beside
  IMTL-G and linear scalarisation.
* ``solver``: the Newton steps per training step of ConicGrad, MGDA, UPGrad,
  DualProj, CAGrad, Nash-MTL and FairGrad over 100 steps of the CNN (batches
  of 32 from one fixed data set), with and without warm start.
* ``diagnostics``: ConicGrad's update with and without ``with_diagnostics``
  (K = 10, m = 1e6, float32, 15 rounds).

Writes ``perf.json``, ``perf.png`` and the tables ``perf.md`` (``perf_quick.*``
with ``--quick``).

Usage:
  python -m benchmarks perf [--quick] [--parts aggregation,torchjd,task_grads,modes,modes_large,compile,compile_stages,solver,diagnostics]
                            [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import time
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import conicgrad_jax as cg
from benchmarks import models
from benchmarks import timing
from conicgrad_jax import linalg
from conicgrad_jax.solvers import cone as cone_solver

PARTS = ("aggregation", "torchjd", "task_grads", "modes", "modes_large", "compile",
         "compile_stages", "solver",
         "diagnostics")


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
      update = jax.jit(lambda g, s: tx.update(g, s))   # the update and the new state
      calls = {"floor": lambda: floor(J, w), "gram": lambda: gram(J),
               "upper_triangle_gram": lambda: upper(J), "conicgrad": lambda: update(tree, state)}
      times = timing.interleaved_times(calls, rounds)
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


def diagnostics_part(k, m, rounds):
  """ConicGrad's update with and without ``with_diagnostics`` (same J, interleaved)."""
  J = jnp.asarray(_jacobian(k, m, seed=7))
  calls = {}
  for name, tx in (("conicgrad", cg.conicgrad(0.5, num_tasks=k)),
                   ("with_diagnostics(conicgrad)",
                    cg.with_diagnostics(cg.conicgrad(0.5, num_tasks=k), num_tasks=k))):
    # The update and the new state: the diagnostics live in the state, so a program that
    # dropped it would let XLA remove them.
    update = jax.jit(lambda g, s, tx=tx: tx.update(g, s))
    calls[name] = lambda update=update, state=tx.init(None): update(J, state)
  times = timing.interleaved_times(calls, rounds)
  base = np.median(times["conicgrad"])
  return [dict(part="diagnostics", candidate=name, K=k, m=m, rounds=rounds,
               ratio_to_unwrapped=float(np.median(t) / base),
               noise_iqr_over_median=float((np.quantile(t, 0.75) - np.quantile(t, 0.25))
                                           / np.median(t)), **timing.summary(t))
          for name, t in times.items()]


def _nash_spread(gram, J, update):
  """How far an update Jᵀα is from Nash-MTL's fixed point: std/mean of (Gα)_i α_i.

  Gα = 1/α up to a common scale of α (the norm clip) makes (Gα)_i α_i equal for
  every task; α is recovered from the update as G⁻¹ J update.
  """
  alpha = np.linalg.solve(gram, J.astype(np.float64) @ np.asarray(update, np.float64))
  prod = (gram @ alpha) * alpha
  return float(np.std(prod) / np.mean(prod))


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
      update = jax.jit(lambda g, s, tx=tx: tx.update(g, s))   # the update and the new state
      state = tx.init(None)
      calls[f"torchjd:{agg_name}"] = lambda agg=agg: agg(Jt)
      calls[f"ours:{ours}"] = lambda update=update, state=state: update(J, state)
      answers[agg_name] = (np.asarray(agg(Jt)), np.asarray(update(J, state)[0]))
    tx = cg.conicgrad(0.5, num_tasks=k)
    cstate = tx.init(None)
    cupdate = jax.jit(lambda g, s: tx.update(g, s))
    calls["ours:conicgrad"] = lambda: cupdate(J, cstate)
    # The Gram matrix alone: torch's CPU BLAS against XLA:CPU's dot, same float32 J.
    xla_gram = jax.jit(lambda J: J @ J.T)
    calls["gram:torch"] = lambda: Jt @ Jt.T
    calls["gram:xla"] = lambda: xla_gram(J)
    times = timing.interleaved_times(calls, rounds)
    rows.append({"part": "gram_torch", "K": k, "m": m,
                 "torch_median_s": float(np.median(times["gram:torch"])),
                 "xla_median_s": float(np.median(times["gram:xla"])),
                 "xla_over_torch": float(np.median(times["gram:xla"])
                                         / np.median(times["gram:torch"])),
                 "torch_threads": torch.get_num_threads()})
    gram64 = J_np.astype(np.float64) @ J_np.T.astype(np.float64)
    for agg_name, (ours, _) in TORCHJD.items():
      t_theirs, t_ours = times[f"torchjd:{agg_name}"], times[f"ours:{ours}"]
      theirs, mine = answers[agg_name]
      row = {"part": "torchjd", "aggregator": agg_name, "ours": ours, "K": k, "m": m,
             "torchjd_median_s": float(np.median(t_theirs)),
             "ours_median_s": float(np.median(t_ours)),
             "speedup": float(np.median(t_theirs) / np.median(t_ours)),
             "max_abs_diff": float(np.max(np.abs(theirs - mine))),
             "max_abs_update": float(np.max(np.abs(theirs)))}
      if agg_name == "NashMTL":
        row["fixed_point_spread_torchjd"] = _nash_spread(gram64, J_np, theirs)
        row["fixed_point_spread_ours"] = _nash_spread(gram64, J_np, mine)
      rows.append(row)
    rows.append({"part": "torchjd", "aggregator": None, "ours": "conicgrad", "K": k, "m": m,
                 "ours_median_s": float(np.median(times["ours:conicgrad"]))})
  return rows


def _mode_candidates(k, every, full_grid):
  """name -> make_task_update options (``host``: recompute/reuse on a host schedule)."""
  chunk = min(8, k - 1)   # at least two chunks
  c = {
      "stacked (loop)": dict(mode="stacked", strategy="loop"),
      "stacked (vmap)": dict(mode="stacked", strategy="vmap"),
      f"chunked({chunk}) unrolled": dict(mode="chunked", chunk_size=chunk, unroll=True),
      "gramian unrolled": dict(mode="gramian", unroll=True),
      "representation": dict(mode="representation"),
      "reuse step alone": dict(mode="stacked", every=every, reuse_only=True),
      f"amortised(N={every}), stacked, host schedule": dict(mode="stacked", every=every,
                                                            host=True),
      f"amortised(N={every}), representation, lax.cond": dict(mode="representation",
                                                             every=every),
      f"amortised(N={every}), representation, host schedule": dict(
          mode="representation", every=every, host=True),
      f"amortised(N={every}), stacked, lax.cond": dict(mode="stacked", every=every),
      f"chunked({chunk}) lax.map": dict(mode="chunked", chunk_size=chunk, unroll=False),
      "gramian lax.scan": dict(mode="gramian", unroll=False),
  }
  if full_grid:  # the bodies' convolutions as autodiff wrote them, which XLA:CPU runs slowly
    as_traced = dict(canonical_convolutions=False)
    c.update({
        f"chunked({chunk}) lax.map, as traced": dict(mode="chunked", chunk_size=chunk,
                                              unroll=False, **as_traced),
        "gramian lax.scan, as traced": dict(mode="gramian", unroll=False, **as_traced),
        f"amortised(N={every}), stacked, lax.cond, as traced": dict(
            mode="stacked", every=every, **as_traced),
    })
  return c


def modes_part(k, width, batch, rounds, every, full_grid, label):
  """Training steps per mode, side by side: time, ratios to LS and to stacked, memory, compile."""
  params = models.init_params(k, width)
  images, labels = models.synthetic_batch(batch, k)
  adam = optax.adam(1e-3)
  # name -> (list of the step functions one cycle calls in order, initial state)
  steps = {"linear_scalarization": ([models.mean_loss_step(adam)], adam.init(params))}
  for name, cfg in _mode_candidates(k, every, full_grid).items():
    cfg = dict(cfg)
    host, reuse_only = cfg.pop("host", False), cfg.pop("reuse_only", False)
    rep = cfg["mode"] == "representation"
    task = models.task_update(cg.conicgrad(0.5, num_tasks=k), shared=None if rep else
                              models.is_shared, **cfg)
    n_every = cfg.get("every", 1)
    if reuse_only:
      cycle = [models.training_step(task.reuse, adam)]
    elif host:
      cycle = ([models.training_step(task.recompute, adam)]
               + [models.training_step(task.reuse, adam)] * (n_every - 1))
    else:
      cycle = [models.training_step(task.step, adam)] * n_every
    steps[name] = (cycle, (task.init(params), adam.init(params)))

  rows, calls = [], {}
  for name, (cycle, state) in tqdm(steps.items(), desc=f"modes {label}"):
    compiled, compile_s = {}, 0.0
    for f in cycle:
      if f not in compiled:
        t0 = time.perf_counter()
        compiled[f] = timing.compiled_call(f, params, state, images, labels)[0]
        compile_s += time.perf_counter() - t0
    temp = max(c.memory_analysis().temp_size_in_bytes for c in compiled.values())
    cycle = [compiled[f] for f in cycle]   # timed as compiled: no second compilation

    def call(cycle=cycle, state=state):
      p, s = params, state
      for f in cycle:
        p, s = f(p, s, images, labels)
      return p

    calls[name] = call
    rows.append({"part": "modes", "config": label, "candidate": name, "K": k, "batch": batch,
                 "width": width, "m_shared": models.count(params),
                 "steps_per_call": len(cycle), "temp_bytes": int(temp),
                 "compile_s": compile_s})
  times = timing.interleaved_times(calls, rounds)
  base_t = np.median(times["linear_scalarization"])
  stacked_t = np.median(times["stacked (loop)"]) / 1
  base_m = next(r["temp_bytes"] for r in rows if r["candidate"] == "linear_scalarization")
  stacked_m = next(r["temp_bytes"] for r in rows if r["candidate"] == "stacked (loop)")
  for r in rows:
    t = times[r["candidate"]] / r["steps_per_call"]
    r.update(timing.summary(t), ratio_time_to_ls=float(np.median(t) / base_t),
             ratio_time_to_stacked=float(np.median(t) / stacked_t),
             ratio_memory_to_ls=r["temp_bytes"] / base_m,
             ratio_memory_to_stacked=r["temp_bytes"] / stacked_m,
             noise_iqr_over_median=float((np.quantile(t, 0.75) - np.quantile(t, 0.25))
                                         / np.median(t)))
  host = next(r for r in rows if "stacked, host" in r["candidate"])
  for r in rows:
    if "lax.cond" in r["candidate"]:
      kind = "representation" if "representation" in r["candidate"] else "stacked"
      ref = next(x for x in rows if f"{kind}, host" in x["candidate"])
      r["ratio_time_to_host_schedule"] = r["median_s"] / ref["median_s"]
  del host
  return rows


def task_grads_part(ks, width, batch, rounds):
  """value_and_task_grads by a loop of K VJPs against one vmapped VJP: step time and compile time."""
  rows = []
  for k in tqdm(ks, desc="task_grads"):
    params = models.init_params(k, width)
    images, labels = models.synthetic_batch(batch, k)
    calls = {}
    for strategy in cg.task_updates.STRATEGIES:
      f = jax.jit(cg.value_and_task_grads(models.task_losses, shared=models.is_shared,
                                          strategy=strategy))
      t0 = time.perf_counter()
      compiled, call = timing.compiled_call(f, params, images, labels)
      rows.append({"part": "task_grads", "strategy": strategy, "K": k, "width": width,
                   "batch": batch, "compile_s": time.perf_counter() - t0})
      calls[strategy] = call
    times = timing.interleaved_times(calls, rounds)
    for r in rows[-2:]:
      r.update(timing.summary(times[r["strategy"]]),
               ratio_to_loop=float(np.median(times[r["strategy"]]) / np.median(times["loop"])))
  return rows


FAST_COMPILE = {"xla_cpu_use_fusion_emitters": False}
"""XLA:CPU's elemental emitters instead of its fusion emitters: ``jax.jit(f, compiler_options=...)``."""


def _compile_seconds(fn, *args, repeats=3, compiler_options=None):
  """Median wall and process-CPU seconds of ``jax.jit(fn).lower(*args).compile()``, of the
  trace and lowering alone, and the number of fused kernels XLA generated code for."""
  wall, cpu, lower = [], [], []
  for _ in range(repeats):
    jax.clear_caches()
    t0, c0 = time.perf_counter(), time.process_time()
    lowered = jax.jit(fn, compiler_options=compiler_options).lower(*args)
    lower.append(time.perf_counter() - t0)
    compiled = lowered.compile()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  kernels = len(re.findall(r"= \S+ fusion\(", compiled.as_text()))
  return float(np.median(wall)), float(np.median(cpu)), float(np.median(lower)), kernels


def fast_compile_runtime(k, width, batch, rounds):
  """A ConicGrad training step of the CNN compiled with and without FAST_COMPILE, timed side by side."""
  params = models.init_params(k, width)
  images, labels = models.synthetic_batch(batch, k)
  adam = optax.adam(1e-3)
  task = models.task_update(cg.conicgrad(0.5, num_tasks=k), shared=models.is_shared)
  state = (task.init(params), adam.init(params))
  calls, rows = {}, []
  for label, options in (("default", None), ("fast compile", FAST_COMPILE)):
    t0 = time.perf_counter()
    jitted = models.training_step(task.step, adam, compiler_options=options)
    _, calls[label] = timing.compiled_call(jitted, params, state, images, labels)
    rows.append({"part": "fast_compile_runtime", "candidate": label, "K": k, "batch": batch,
                 "compile_s": time.perf_counter() - t0})
  times = timing.interleaved_times(calls, rounds)
  for r in rows:
    r.update(timing.summary(times[r["candidate"]]),
             ratio_to_default=float(np.median(times[r["candidate"]]) / np.median(times["default"])))
  return rows


def compile_part(k, repeats):
  """Compile time of each Gram method's update at K on a two-leaf pytree, both compiler options."""
  rng = np.random.default_rng(0)
  tree = {"a": jnp.asarray(rng.standard_normal((k, 1000)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal((k, 20, 5)), jnp.float32)}
  like = jax.tree_util.tree_map(lambda x: x[0], tree)
  rows = []
  txs = {"conicgrad (warm start)": cg.conicgrad(0.5, num_tasks=k),
         "conicgrad (cold)": cg.conicgrad(0.5, num_tasks=k, warm_start=False),
         "mgda": cg.mgda(num_tasks=k), "upgrad": cg.upgrad(num_tasks=k),
         "imtl_g": cg.imtl_g(num_tasks=k), "linear_scalarization": cg.linear_scalarization()}
  for name, tx in tqdm(txs.items(), desc="compile"):
    for options in (None, FAST_COMPILE):
      wall, cpu, lower, kernels = _compile_seconds(tx.update, tree, tx.init(like),
                                                   repeats=repeats, compiler_options=options)
      rows.append({"part": "compile", "method": name, "K": k, "compile_wall_s": wall,
                   "compile_cpu_s": cpu, "trace_and_lower_s": lower, "fused_kernels": kernels,
                   "compiler_options": "fast compile" if options else "default"})
  return rows


def _skip_crossover(gram_n, q, p, n0, c, x0, task_active, null_projector, ball_active,
                    cap_active):
  """A stand-in for the crossover: every Newton iterate is its start point."""
  del q, p, n0, c, task_active, null_projector, ball_active, cap_active
  k = gram_n.shape[0]
  return (jnp.broadcast_to(x0[:k], (cone_solver._POLISH_STEPS, k)),
          jnp.broadcast_to(x0[k + 1:2 * k + 1], (cone_solver._POLISH_STEPS, k)))


def _skip_barrier(factor, z0, c, tol, max_iter):
  """A stand-in for the interior-point phase: it returns its start point."""
  del c, tol, max_iter
  ones = jnp.ones((factor.shape[0],), factor.dtype)
  y = jnp.concatenate([z0, jnp.zeros((1,), factor.dtype)])
  return y, (ones, ones[0], ones[0]), (ones, ones[0], ones[0]), ones[0], jnp.asarray(0)


def compile_stages_part(k, repeats):
  """Where ConicGrad's compile time goes: its cold update compiled whole, then with the
  crossover, and the interior-point phase too, replaced by stand-ins that return their
  start point (the answers are then wrong: this measures the program, not the solver).
  IMTL-G and linear scalarisation give the floor of a Gram method and of any method."""
  rng = np.random.default_rng(0)
  tree = {"a": jnp.asarray(rng.standard_normal((k, 1000)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal((k, 20, 5)), jnp.float32)}
  like = jax.tree_util.tree_map(lambda x: x[0], tree)
  cold = lambda: cg.conicgrad(0.5, num_tasks=k, warm_start=False)
  programs = [
      ("conicgrad (cold), whole", cold, ()),
      ("without the crossover", cold, (("_crossover", _skip_crossover),)),
      ("without the crossover and the interior point", cold,
       (("_crossover", _skip_crossover), ("_primal_barrier", _skip_barrier))),
      ("imtl_g (floor of a Gram method)", lambda: cg.imtl_g(num_tasks=k), ()),
      ("linear_scalarization", cg.linear_scalarization, ()),
  ]
  rows = []
  for label, factory, patches in programs:
    tx = factory()
    with contextlib.ExitStack() as stack:
      for name, stand_in in patches:
        stack.enter_context(mock.patch.object(cone_solver, name, stand_in))
      wall, cpu, lower, kernels = _compile_seconds(tx.update, tree, tx.init(like),
                                                   repeats=repeats)
    rows.append({"part": "compile_stages", "program": label, "K": k, "compile_wall_s": wall,
                 "compile_cpu_s": cpu, "trace_and_lower_s": lower, "fused_kernels": kernels})
  whole = rows[0]["compile_wall_s"]
  for r in rows:
    r["ratio_to_whole"] = r["compile_wall_s"] / whole
  return rows


_CACHE_CHILD = """
import sys, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_compilation_cache_dir", sys.argv[2])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
import conicgrad_jax as cg
k = int(sys.argv[1])
rng = np.random.default_rng(0)
tree = {"a": jnp.asarray(rng.standard_normal((k, 1000)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal((k, 20, 5)), jnp.float32)}
tx = cg.conicgrad(0.5, num_tasks=k)
state = tx.init(jax.tree_util.tree_map(lambda x: x[0], tree))
jax.jit(lambda x: x + 1)(1.0)   # backend start-up, not counted
t0 = time.perf_counter()
jax.jit(tx.update).lower(tree, state).compile()
print("COMPILE_S", time.perf_counter() - t0)
"""


def persistent_cache_part(k, repeats):
  """ConicGrad's update compiled in a fresh process, then again in another one that reads
  JAX's persistent compilation cache (``jax_compilation_cache_dir``); fresh cache each repeat."""
  import subprocess
  import sys
  import tempfile

  times = {"first process (compiles, writes the cache)": [],
           "next process (reads the cache)": []}
  for _ in range(repeats):
    with tempfile.TemporaryDirectory() as cache:
      for label in times:
        out = subprocess.run([sys.executable, "-c", _CACHE_CHILD, str(k), cache],
                             capture_output=True, text=True, check=True).stdout
        times[label].append(float(out.split("COMPILE_S")[1]))
  return [{"part": "persistent_cache", "method": "conicgrad (warm start)", "K": k, "run": label,
           "compile_wall_s": float(np.median(t)), "repeats": repeats}
          for label, t in times.items()]


def solver_part(k, train_steps):
  """Newton steps per training step of the iteratively solved Gram methods, cold and warm."""
  rows = []
  # Newton steps per training step of each iteratively solved Gram method, cold and
  # warm-started, in a short training run of the CNN (one fixed data set, the same K
  # tasks throughout, taken in batches of 32).
  params = models.init_params(k, 0.25)
  images, labels = models.synthetic_batch(32 * train_steps, k)
  adam = optax.adam(1e-3)
  for name, factory in tqdm(_WARM_STARTED.items(), desc="warm start"):
    for warm in (False, True):
      task = models.task_update(factory(k, warm), shared=models.is_shared)
      step = models.training_step(task.step, adam)
      p, state = params, (task.init(params), adam.init(params))
      iterations, residuals = [], []
      for i in range(train_steps):
        batch = slice(32 * i, 32 * (i + 1))
        p, state = step(p, state, images[batch], labels[batch])
        method_state = state[0].method_state
        if name == "conicgrad":
          iterations.append(int(method_state.diagnostics.iterations))
          residuals.append(float(method_state.diagnostics.residual))
        else:
          iterations.append(int(method_state.info.iterations))
      rows.append({"part": "warm_start", "method": name, "warm_start": warm, "K": k,
                   "steps": train_steps,
                   "median_newton_steps": float(np.median(iterations)),
                   "mean_newton_steps": float(np.mean(iterations)),
                   "max_residual": float(np.max(residuals)) if residuals else None,
                   "iterations": iterations})
  return rows


_WARM_STARTED = {
    "conicgrad": lambda k, warm: cg.conicgrad(0.5, num_tasks=k, warm_start=warm),
    "mgda": lambda k, warm: cg.mgda(num_tasks=k, warm_start=warm),
    "upgrad": lambda k, warm: cg.upgrad(num_tasks=k, warm_start=warm),
    "dualproj": lambda k, warm: cg.dualproj(num_tasks=k, warm_start=warm),
    "cagrad": lambda k, warm: cg.cagrad(num_tasks=k, warm_start=warm),
    "nash_mtl": lambda k, warm: cg.nash_mtl(num_tasks=k, warm_start=warm),
    "fairgrad": lambda k, warm: cg.fairgrad(num_tasks=k, warm_start=warm),
}
"""The methods whose weights come from an iterative K-dimensional solve (default options)."""


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
  if agg:
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
  md = [r for r in md if r["config"] == md[-1]["config"]] if md else md
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


def _section(title, intro, header, cells) -> list:
  """A markdown section: ``## title``, intro lines, and a table of ``cells`` rows."""
  return ([f"## {title}", "", *intro, "| " + " | ".join(header) + " |",
           "|" + "---|" * len(header)]
          + ["| " + " | ".join(row) + " |" for row in cells] + [""])


def markdown(rows, machine) -> str:
  """The results as markdown tables (benchmarks/results/perf.md)."""
  out = ["# Performance results", "",
         f"Machine: {machine['platform']}, {machine['cpu_count']} CPU cores, jax "
         f"{machine['jax']}, backend {machine['backend']}. Medians of interleaved rounds; "
         "ratios within one run. `noise` is the interquartile range over the median.", ""]
  tg = [r for r in rows if r["part"] == "task_grads"]
  if tg:
    out += ["## Stacked task gradients: loop of K VJPs vs one vmapped VJP", "",
            "| K | strategy | median ms | ratio to loop | compile s |", "|---|---|---|---|---|"]
    out += [f"| {r['K']} | {r['strategy']} | {1e3 * r['median_s']:.1f} | "
            f"{r['ratio_to_loop']:.2f} | {r['compile_s']:.1f} |" for r in tg]
    out.append("")
  mode_rows = [r for r in rows if r["part"] in ("modes", "modes_large")]
  for config in dict.fromkeys(r["config"] for r in mode_rows):
    md = [r for r in mode_rows if r["config"] == config]
    r0 = md[0]
    out += [f"## Training step per mode: {config} (K = {r0['K']}, {r0['m_shared'] / 1e6:.2f}M "
            f"shared parameters, batch {r0['batch']})", "",
            "| candidate | ms / step | × LS | × stacked | × host schedule | temp MiB | "
            "memory × stacked | compile s | noise |", "|---|---|---|---|---|---|---|---|---|"]
    for r in md:
      host = r.get("ratio_time_to_host_schedule")
      out.append(f"| {r['candidate']} | {1e3 * r['median_s']:.1f} | {r['ratio_time_to_ls']:.2f} | "
                 f"{r['ratio_time_to_stacked']:.2f} | {'' if host is None else f'{host:.2f}'} | "
                 f"{r['temp_bytes'] / 2**20:.1f} | {r['ratio_memory_to_stacked']:.2f} | "
                 f"{r['compile_s']:.1f} | {r['noise_iqr_over_median']:.2f} |")
    out.append("")
  tj = [r for r in rows if r["part"] == "torchjd" and r.get("aggregator")]
  if tj:
    out += _section(
        f"torchjd on the same Jacobian (m = {tj[0]['m']:,})",
        ["Difference: the largest absolute difference of the two updates, relative to "
         "the largest entry of torchjd's update.", ""],
        ("torchjd aggregator (ours)", "K", "torchjd ms", "ours ms", "torchjd time / ours",
         "max abs difference (largest entry)", "relative difference"),
        [(f"{r['aggregator']} (`{r['ours']}`)", str(r["K"]),
          f"{1e3 * r['torchjd_median_s']:.1f}", f"{1e3 * r['ours_median_s']:.1f}",
          f"{r['speedup']:.2f}", f"{r['max_abs_diff']:.1e} ({r['max_abs_update']:.2g})",
          f"{r['max_abs_diff'] / r['max_abs_update']:.1e}") for r in tj])
  dg = [r for r in rows if r["part"] == "diagnostics"]
  if dg:
    out += _section(
        f"`with_diagnostics` (K = {dg[0]['K']}, m = {dg[0]['m']:,}, float32, medians of "
        f"{dg[0]['rounds']} interleaved rounds)", [],
        ("update", "ms", "× unwrapped", "noise"),
        [(r["candidate"], f"{1e3 * r['median_s']:.1f}", f"{r['ratio_to_unwrapped']:.2f}",
          f"{r['noise_iqr_over_median']:.2f}") for r in dg])
  nash = [r for r in tj if "fixed_point_spread_ours" in r]
  if nash:
    out += _section(
        "Nash-MTL's fixed point Gα = 1/α in the two answers", [
            "std/mean over the tasks of (Gα)_i α_i, with α recovered from each update "
            "(0 at the fixed point, whatever the norm clip's scale).", ""],
        ("K", "torchjd", "ours"),
        [(str(r["K"]), f"{r['fixed_point_spread_torchjd']:.1e}",
          f"{r['fixed_point_spread_ours']:.1e}") for r in nash])
  gt = [r for r in rows if r["part"] == "gram_torch"]
  if gt:
    out += _section(
        "The Gram matrix J Jᵀ alone: torch's CPU BLAS against XLA:CPU", [],
        ("K", "m", "torch ms", "XLA ms", "XLA / torch"),
        [(str(r["K"]), f"{r['m']:,}", f"{1e3 * r['torch_median_s']:.1f}",
          f"{1e3 * r['xla_median_s']:.1f}", f"{r['xla_over_torch']:.2f}") for r in gt])
  cp = [r for r in rows if r["part"] == "compile"]
  if cp:
    out += [f"## Compile time of `jax.jit(method.update)` (K = {cp[0]['K']}, two-leaf pytree)", "",
            "Trace, lowering and XLA compilation; *fast compile* is "
            "`jax.jit(f, compiler_options={\"xla_cpu_use_fusion_emitters\": False})`.", "",
            "| method | compiler options | wall s | process CPU s | of which trace + lower s "
            "| fused kernels |", "|---|---|---|---|---|---|"]
    out += [f"| {r['method']} | {r.get('compiler_options', 'default')} | "
            f"{r['compile_wall_s']:.2f} | {r['compile_cpu_s']:.2f} | "
            f"{r.get('trace_and_lower_s', float('nan')):.2f} | {r.get('fused_kernels', '')} |"
            for r in cp]
    out.append("")
  pc = [r for r in rows if r["part"] == "persistent_cache"]
  if pc:
    out += _section(
        f"Recompiling in a new process with JAX's persistent compilation cache "
        f"({pc[0]['method']}, K = {pc[0]['K']})",
        ["`jax.config.update(\"jax_compilation_cache_dir\", ...)`; each process traces, "
         "lowers and compiles `jax.jit(update)` (medians of "
         f"{pc[0]['repeats']} fresh caches).", ""],
        ("run", "wall s"), [(r["run"], f"{r['compile_wall_s']:.2f}") for r in pc])
  fr = [r for r in rows if r["part"] == "fast_compile_runtime"]
  if fr:
    out += _section(
        f"Run time of a ConicGrad training step compiled for speed of compilation "
        f"(CNN, K = {fr[0]['K']}, batch {fr[0]['batch']})", [],
        ("compiler options", "ms / step", "× default", "compile s"),
        [(r["candidate"], f"{1e3 * r['median_s']:.1f}", f"{r['ratio_to_default']:.2f}",
          f"{r['compile_s']:.1f}") for r in fr])
  st = [r for r in rows if r["part"] == "compile_stages"]
  if st:
    out += _section(
        f"Where ConicGrad's compile time goes (K = {st[0]['K']}, cold update, two-leaf pytree)",
        ["The crossover, then the interior-point phase too, replaced by stand-ins that return "
         "their start point (wrong answers: this measures the program only). Medians of "
         "fresh compilations, XLA's defaults.", ""],
        ("program", "wall s", "× whole", "of which trace + lower s", "fused kernels"),
        [(r["program"], f"{r['compile_wall_s']:.2f}", f"{r['ratio_to_whole']:.2f}",
          f"{r['trace_and_lower_s']:.2f}", str(r["fused_kernels"])) for r in st])
  ws = [r for r in rows if r["part"] == "warm_start"]
  if ws:
    out += [f"## Newton steps per training step, cold and warm-started (K = {ws[0]['K']}, "
            f"{ws[0]['steps']} steps of the CNN)", "",
            "UPGrad counts the steps of its K QPs together; an exact solve on the previous "
            "solution's active set counts as one. Largest residual: ConicGrad's certified "
            "relative duality gap.", "",
            "| method | cold median | cold mean | warm median | warm mean | "
            "largest residual (warm) |", "|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r.get("method", "conicgrad") for r in ws):
      by = {r["warm_start"]: r for r in ws if r.get("method", "conicgrad") == method}
      cold, warm = by.get(False), by.get(True)
      cell = lambda r, key, fmt: format(r[key], fmt) if r is not None else ""
      res = warm.get("max_residual") if warm is not None else None
      out.append(f"| {method} | {cell(cold, 'median_newton_steps', '.0f')} | "
                 f"{cell(cold, 'mean_newton_steps', '.1f')} | "
                 f"{cell(warm, 'median_newton_steps', '.0f')} | "
                 f"{cell(warm, 'mean_newton_steps', '.1f')} | "
                 f"{'' if res is None else format(res, '.1e')} |")
    out.append("")
  ag = [r for r in rows if r["part"] == "aggregation"]
  if ag:
    out += ["## Aggregation (float32): ConicGrad's update beside the Gram matrix alone", "",
            "| K | m | candidate | median ms | × floor |", "|---|---|---|---|---|"]
    out += [f"| {r['K']} | {r['m']:.0e} | {r['candidate']} | {1e3 * r['median_s']:.1f} | "
            f"{r['ratio_to_floor']:.2f} |" for r in ag]
    out.append("")
  return "\n".join(out)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks perf")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  parser.add_argument("--keep-other-parts", action="store_true",
                      help="keep the rows of the parts not run from the existing JSON in --out")
  args = parser.parse_args(argv)
  parts = args.parts.split(",")
  for p in parts:
    if p not in PARTS:
      parser.error(f"unknown part {p!r}; choose from {PARTS}")
  rows = []
  q = args.quick
  if "aggregation" in parts:
    rows += (aggregation((2, 10), (100_000,), 2) if q
             else aggregation((2, 10, 40, 128), (100_000, 1_000_000, 5_200_000), 5))
  if "torchjd" in parts:
    rows += torchjd_part((2, 10), 100_000, 2) if q else torchjd_part((2, 10, 40), 1_000_000, 5)
  if "task_grads" in parts:
    rows += task_grads_part((2, 4), 0.25, 2, 1) if q else task_grads_part((2, 6, 10), 0.25, 8, 5)
  if "modes" in parts:
    if q:
      rows += modes_part(3, 0.25, 2, 1, 2, full_grid=False, label="quick")
    else:
      rows += modes_part(6, 0.25, 8, 5, 4, full_grid=True, label="small CNN")
      rows += modes_part(3, 0.25, 8, 15, 4, full_grid=False, label="3-task CNN, 15 rounds")
  if "modes_large" in parts:
    large = (modes_part(40, 0.1, 2, 1, 2, full_grid=False, label="40-task CNN, quick") if q
             else modes_part(40, models.WIDTHS["5.2M"], 8, 3, 10, full_grid=False,
                             label="40-task CNN (celeba_scaling's 5.2M model)"))
    rows += [dict(r, part="modes_large") for r in large]
  if "compile" in parts:
    rows += compile_part(4, 1) if q else compile_part(10, 3)
    rows += persistent_cache_part(4, 1) if q else persistent_cache_part(10, 3)
    rows += (fast_compile_runtime(3, 0.25, 8, 3) if q
             else fast_compile_runtime(6, 0.25, 8, 15))
  if "compile_stages" in parts:
    rows += compile_stages_part(4, 1) if q else compile_stages_part(10, 5)
  if "solver" in parts:
    rows += solver_part(4, 5) if q else solver_part(10, 100)
  if "diagnostics" in parts:
    rows += diagnostics_part(4, 10_000, 3) if q else diagnostics_part(10, 1_000_000, 15)
  name = "perf_quick" if q else "perf"
  os.makedirs(args.out, exist_ok=True)
  existing = os.path.join(args.out, f"{name}.json")
  if args.keep_other_parts and os.path.exists(existing):
    with open(existing) as f:
      old = json.load(f)["rows"]
    ran = ({"warm_start" if p == "solver" else p for p in parts}
           | ({"fast_compile_runtime", "persistent_cache"} if "compile" in parts else set())
           | ({"gram_torch"} if "torchjd" in parts else set()))
    rows = [r for r in old if r["part"] not in ran] + rows
  machine = timing.machine()
  with open(os.path.join(args.out, f"{name}.json"), "w") as f:
    json.dump({"benchmark": "perf", "quick": q, "machine": machine, "rows": rows}, f, indent=2)
  with open(os.path.join(args.out, f"{name}.md"), "w") as f:
    f.write(markdown(rows, machine))
  plot(rows, os.path.join(args.out, f"{name}.png"))
  for r in rows:
    print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()
           if k not in ("q25_s", "q75_s", "n", "iterations")})
  return rows


if __name__ == "__main__":
  main()
