"""Summaries of the converged protocol: ``<name>_converged.json``, ``.md`` and the PNGs.

Written from whatever runs are finished (``--summarise-only`` writes them without
training). Per method: its configuration (tuned methods: the value chosen on seed
0's validation score; "provisional" while the grid is incomplete), the seeds
done, test metrics (mean ± standard error over seeds), Δm% against the STL
baselines (the mean over the STL seeds done), the mean rank over all task
metrics, how many runs converged and their epochs. The JSON keeps every run's
validation curve.
"""

from __future__ import annotations

from typing import Optional

import collections
import json
import math
import os

import numpy as np

from benchmarks import converged
from benchmarks import store as store_m
from benchmarks import supervised


def training_cpu_seconds(run) -> float:
  """The CPU seconds a run spent training, epoch by epoch.

  Epochs record their process time (``cpu_seconds``: one worker, single-threaded XLA,
  pinned to a core). Epochs trained before that was recorded count the run's median
  epoch wall time: a pinned single-threaded worker's wall time is its CPU time except
  while the machine pauses it, and the median leaves such pauses out.
  """
  history = run.get("history") or []
  median = float(np.median([h["seconds"] for h in history if "seconds" in h] or [0.0]))
  return float(sum(h.get("cpu_seconds", median) for h in history))


def summarise(bench: converged.Bench, runs: dict, planned: list, quick: bool = False) -> dict:
  """The summary dict of one benchmark from ``runs`` (key -> result) and the planned jobs."""
  protocol = bench.protocol
  k = bench.k
  hib = protocol.higher_is_better
  ok = {key: r for key, r in runs.items() if not r.get("failed") and _finite(r.get("test_metrics"))}
  by_config = {}
  for r in ok.values():
    cfg = tuple(sorted(r.get("config", {}).items()))
    by_config.setdefault((r["method"], cfg), {})[r["seed"]] = r

  # STL reference: task i's metric of stl_i, mean over its seeds.
  stl, stl_seeds = [], []
  for i in range(k):
    seeds = by_config.get((f"stl_{i}", ()), {})
    stl_seeds.append(sorted(seeds))
    stl.append(float(np.mean([seeds[s]["test_metrics"][i] for s in seeds])) if seeds else None)
  have_stl = all(v is not None for v in stl)
  sign = np.array([-1.0 if h else 1.0 for h in bench.higher_is_better])

  tuned = {}
  for m, spec in converged.grids_for(quick).items():
    if any(r["method"] == m for r in runs.values()):
      t = converged.tuning(bench.name, m, runs.get, hib, spec)
      tuned[m] = {**t, "provisional": not t["complete"]}

  rows = {}
  methods = sorted({m for m, _ in by_config if not m.startswith("stl_")})
  for m in methods:
    if m in tuned:
      if tuned[m]["chosen"] is None:
        continue
      cfg = ((tuned[m]["option"], tuned[m]["chosen"]),)
    else:
      cfg = ()
    seeds = by_config.get((m, cfg), {})
    if not seeds:
      continue
    order = sorted(seeds)
    metrics = np.array([seeds[s]["test_metrics"] for s in order], np.float64)     # (seeds, K)
    row = {"config": dict(cfg), "seeds": order, "n_seeds": len(order),
           "mean": metrics.mean(0).tolist(), "sem": supervised.standard_error(metrics),
           "converged": sum(bool(seeds[s]["converged"]) for s in order),
           "stops": _stops(seeds[s] for s in order),
           "epochs_run": [seeds[s]["epochs_run"] for s in order],
           "best_epochs": [seeds[s]["best_epoch"] for s in order],
           "wall_s": [seeds[s]["wall_s"] for s in order],
           "time_per_step_in_runs_s": _median([seeds[s].get("time_per_step_in_run_s")
                                               for s in order]),
           "mode": seeds[order[0]].get("mode"), "tuned": m in tuned,
           "provisional": bool(m in tuned and tuned[m]["provisional"])}
    if have_stl:
      ref = np.asarray(stl)
      delta = 100.0 * np.mean(sign * (metrics - ref) / np.abs(ref), axis=1)
      row["delta_m_pct"] = float(delta.mean())
      row["delta_m_sem"] = supervised.standard_error(delta)
      row["delta_m_per_seed"] = delta.tolist()
      # A tuned method's seed 0 is the grid run that won on validation; its other seeds
      # took no part in the choice.
      later = [j for j, s in enumerate(order) if s != 0]
      row["delta_m_pct_unselected"] = (float(np.mean(delta[later]))
                                       if m in tuned and later else None)
    else:
      row["delta_m_pct"] = row["delta_m_sem"] = None
    rows[m] = row
  ls_step = rows.get("linear_scalarization", {}).get("time_per_step_in_runs_s")
  for row in rows.values():
    t = row["time_per_step_in_runs_s"]
    row["time_ratio_to_ls"] = t / ls_step if t and ls_step else None
  names = list(rows)
  if names:
    ranks = supervised.mean_ranks([rows[m]["mean"] for m in names], bench.higher_is_better)
    for m, r in zip(names, ranks):
      rows[m]["mean_rank"] = float(r)

  real = [j for j in planned if isinstance(j, converged.Job)]
  pending = [j for j in planned if isinstance(j, converged.Pending)]
  n_planned = len(real) + len(pending)
  planned_keys = {j.key for j in real}
  done_planned = sum(key in runs for key in planned_keys)
  all_runs = list(runs.values())
  counts = {"planned": n_planned, "done": len(all_runs), "done_of_planned": done_planned,
            "converged": sum(bool(r.get("converged")) for r in all_runs),
            "stops": _stops(all_runs),
            "lr_floor_gain_in_last_window": _floor_gains(all_runs, protocol),
            "hit_cap": sum(r.get("stop_reason") == "cap" for r in all_runs),
            "non_finite": sum(r.get("stop_reason") == "non-finite parameters" for r in all_runs),
            "failed": sum(bool(r.get("failed")) for r in all_runs),
            "no_finite_test_metrics": len(_unusable(runs))}
  coverage = {m: r["seeds"] for m, r in rows.items()}
  coverage.update({f"stl_{i}": s for i, s in enumerate(stl_seeds)})
  wall = sum(float(r.get("wall_s") or 0.0) for r in all_runs)
  core_target = {m: 3 for m in converged.CORE}
  core_target.update({m: 3 for m in converged.TUNED})
  summary = {
      "benchmark": bench.name, "quick": quick, "library": store_m.library_fingerprint(),
      "seeds": sorted({r["seed"] for r in all_runs if "seed" in r}),
      "protocol": {"converged_rule": protocol.rule(), **{
          f.name: getattr(protocol, f.name) for f in protocol.__dataclass_fields__.values()},
          "min_window": protocol.min_window, "folder": converged.folder_name(bench, quick)},
      "device": converged.DEVICE, "workers": _workers(all_runs),
      "data": bench.data_note,
      "sizes": dict(zip(("train", "val", "test"), bench.sizes)),
      "tuned_methods": sorted(tuned), "tuning": tuned,
      "run_counts": counts, "cpu_hours": sum(training_cpu_seconds(r) for r in all_runs) / 3600.0,
      "worker_wall_hours": wall / 3600.0,
      "partial": done_planned < n_planned,
      "coverage": coverage, "target_seeds": {"core and tuned": 3, "other methods": 1},
      "task_names": list(bench.task_names), "metric": bench.metric_name,
      "stl": stl, "stl_seeds": stl_seeds, "methods": rows,
      "runs": {key: _run_record(r) for key, r in sorted(runs.items())},
  }
  if bench.name == "qm9" and bench.extras:
    summary["stl_published_units"] = published_units(bench, stl)
  return summary


def _stops(runs) -> dict:
  """How many of ``runs`` stopped for each reason ("plateau", "lr floor", "cap", ...)."""
  return dict(collections.Counter(r.get("stop_reason") for r in runs))


def _floor_gains(runs, protocol) -> Optional[dict]:
  """For the runs stopped by the learning-rate floor: how much their best validation
  score improved over the last ``window_percent`` % of their epochs (the plateau test's
  window), in score units, better positive. None when no run stopped there."""
  gains, above = [], []
  for r in runs:
    scores = [h["score"] for h in r.get("history", []) if h.get("score") is not None]
    if r.get("stop_reason") != "lr floor" or len(scores) < 2:
      continue
    window = max(-(-len(scores) * protocol.window_percent // 100), 1)
    best = max if protocol.higher_is_better else min
    gain = best(scores) - best(scores[:-window])
    gains.append(gain if protocol.higher_is_better else -gain)
    # The plateau test's own comparison: better by more than min_delta.
    above.append(converged.Plateau(protocol)._better(best(scores), best(scores[:-window]),
                                                     protocol.min_delta))
  if not gains:
    return None
  return {"runs": len(gains), "min": float(np.min(gains)), "median": float(np.median(gains)),
          "max": float(np.max(gains)), "above_min_delta": int(np.sum(above))}


def _stop_kinds(protocol) -> tuple:
  """The stops a protocol has: the learning-rate floor only where it sets one."""
  return ("plateau", "lr floor", "cap") if protocol.get("lr_halvings") else ("plateau", "cap")


def _stop_cell(stops: dict, kinds: tuple) -> str:
  """The counts of ``kinds`` (``plateau / lr floor / cap``), and any other stop named."""
  cell = " / ".join(str(stops.get(k, 0)) for k in kinds)
  other = {k: v for k, v in stops.items() if k not in kinds}
  return cell + "".join(f", {v} {k}" for k, v in sorted(other.items(), key=str))


def _finite(metrics) -> bool:
  return bool(metrics) and all(v is not None and math.isfinite(v) for v in metrics)


def _unusable(runs: dict) -> list:
  """Keys of runs that finished without failing but have a missing or non-finite test
  metric (left out of the rows, the ranks and the plots)."""
  return [key for key, r in sorted(runs.items())
          if not r.get("failed") and not _finite(r.get("test_metrics"))]


def _median(values):
  values = [v for v in values if v]
  return float(np.median(values)) if values else None


def _workers(runs: list) -> dict:
  """How many runs trained with each number of worker processes sharing the cores
  (recorded per run; "not recorded" for runs from before that record)."""
  counts = {}
  for r in runs:
    key = str(r["workers"]) if "workers" in r else "not recorded"
    counts[key] = counts.get(key, 0) + 1
  return counts


def _run_record(r: dict) -> dict:
  keep = ("method", "config", "seed", "phase", "mode", "strategy", "converged", "stop_reason",
          "epochs_run", "best_epoch", "best_val_score", "final_lr", "test_metrics",
          "best_val_metrics", "wall_s", "time_per_step_in_run_s", "resumed_from_epoch",
          "workers", "code", "code_history", "failed", "error")
  out = {key: r[key] for key in keep if key in r}
  out["val_curve"] = [{"epoch": h["epoch"], "lr": h["lr"], "score": h["score"],
                       "val_metrics": h["val_metrics"]} for h in r.get("history", [])]
  return out


def published_units(bench: converged.Bench, stl) -> dict:
  ex = bench.extras
  ours = [None if v is None else v * f for v, f in zip(stl, ex["to_published"])]
  return {"targets": list(bench.task_names), "units": list(ex["published_units"]),
          "factor_from_ours": list(ex["to_published"]), "ours_stl_test_mae": ours,
          "published_stl_test_mae": list(ex["published_stl"]),
          "published_source": ex["published_source"]}


def _fmt(v, sig=4):
  return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{sig}g}"


def markdown(bench: converged.Bench, s: dict) -> str:
  k = bench.k
  c = s["run_counts"]
  lines = []
  cost = (f"{s['cpu_hours']:.1f} CPU-hours of training; {s['worker_wall_hours']:.1f} worker "
          "wall-hours with evaluation, compilation and the machine's pauses")
  if s["partial"]:
    lines.append(f"**Partial results**: {c['done_of_planned']} of {c['planned']} planned runs "
                 f"finished ({cost}, so far); the seeds column gives "
                 "each method's coverage (target: 3 seeds for the core and tuned methods, 1 "
                 "for the others). Rows with fewer seeds than their target, and tuned values "
                 "chosen before their grid finished (*provisional*), will change.")
  else:
    lines.append(f"All {c['planned']} planned runs finished ({cost}).")
  lines.append("")
  kinds = _stop_kinds(s["protocol"])
  head = ("| method | seeds | " + " | ".join(f"{t} ({bench.metric_name})"
                                          for t in bench.task_names)
          + " | Δm% ↓ | mean rank ↓ | stops: " + " / ".join(kinds)
          + " | epochs run (best), per seed |")
  lines += [head, "|" + "---|" * (k + 6)]
  stl_seeds = s["stl_seeds"]
  stl_n = ",".join(str(len(x)) for x in stl_seeds) if len(set(map(len, stl_seeds))) > 1 \
      else str(len(stl_seeds[0]) if stl_seeds else 0)
  stl_runs = [r for r in s["runs"].values() if r["method"].startswith("stl_")]
  stl_epochs = [r["epochs_run"] for r in stl_runs if not r.get("failed")]
  lines.append(f"| STL | {stl_n} | " + " | ".join(_fmt(v) for v in s["stl"]) + " | 0 | — | "
               f"{_stop_cell(_stops(stl_runs), kinds)} | "
               + (f"{min(stl_epochs)}–{max(stl_epochs)} over {len(stl_epochs)} runs"
                  if stl_epochs else "—") + " |")
  order = sorted(s["methods"].items(),
                 key=lambda kv: (kv[1]["delta_m_pct"] is None, kv[1]["delta_m_pct"] or 0.0))
  for m, r in order:
    name = m
    if r["tuned"]:
      (opt, val), = r["config"].items()
      name += f" ({opt}={converged.fmt_value(val)}{', provisional' if r['provisional'] else ''})"
    target = 3 if (m in converged.CORE or m in converged.TUNED) and not s["quick"] else 1
    seeds = f"{r['n_seeds']}" + (f" of {target}" if r["n_seeds"] < target else "")
    cells = [supervised.plus_minus(mu, se) for mu, se in zip(r["mean"], r["sem"] or [None] * k)]
    dm = ("—" if r["delta_m_pct"] is None else
          supervised.plus_minus(r["delta_m_pct"], r["delta_m_sem"], "{:.2f}", "{:.2f}"))
    runs = [x for x in s["runs"].values() if x["method"] == m
            and x.get("config", {}) == r["config"] and not x.get("failed")]
    lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + f" | {dm} | "
                 + f"{r['mean_rank']:.1f} | {_stop_cell(r['stops'], kinds)} | "
                 + _epochs(runs) + " |")
  failed = [key for key, r in s["runs"].items() if r.get("failed")]
  lines.append("")
  stops, gains = c["stops"], c["lr_floor_gain_in_last_window"]
  lines.append(
      (f"Stops: {stops.get('plateau', 0)} runs by the plateau test, "
       f"{stops.get('lr floor', 0)} at the learning-rate floor, {stops.get('cap', 0)} at the "
       f"epoch cap (converged: plateau or floor; see the rule)."
       if "lr floor" in kinds else
       f"Stops: {stops.get('plateau', 0)} runs by the plateau test (converged), "
       f"{stops.get('cap', 0)} at the epoch cap.")
      + ("" if gains is None else
         f" Over the last {s['protocol']['window_percent']}% of their epochs the best "
         f"validation score of the runs stopped at the floor still rose by "
         f"{_fmt(gains['min'], 3)} to {_fmt(gains['max'], 3)} (median "
         f"{_fmt(gains['median'], 3)}), by more than the minimum improvement in "
         f"{gains['above_min_delta']} of {gains['runs']}: those had not met the plateau "
         f"test."))
  lines.append("")
  if s["tuning"]:
    parts = []
    for m, t in s["tuning"].items():
      scores = ", ".join(f"{v}: {_fmt(sc, 5)}" for v, sc in t["val_scores"].items())
      chosen = "—" if t["chosen"] is None else converged.fmt_value(t["chosen"])
      row = s["methods"].get(m, {})
      later = row.get("delta_m_pct_unselected")
      parts.append(f"{m} {t['option']} ∈ {{{', '.join(map(converged.fmt_value, t['grid']))}}} "
                   f"→ **{chosen}**{'' if t['complete'] else ' (grid incomplete)'} "
                   f"(validation score {scores}"
                   + (f"; Δm% over seeds 1–2 alone: {later:.2f}" if later is not None else "")
                   + ")")
    lines.append("Tuned on seed 0's best validation score (" + s["protocol"]["score"] + "): "
                 + "; ".join(parts) + ". Every other method runs at its defaults. A tuned "
                 "row's seed 0 is the grid run that won on validation, so its mean includes "
                 "the selection; seeds 1 and 2 took no part in it.")
  if failed:
    lines.append("")
    lines.append("Failed runs (left out): " + ", ".join(failed) + ".")
  unusable = _unusable(s["runs"])
  if unusable:
    lines.append("")
    lines.append("Runs without a finite test metric (left out): " + ", ".join(unusable) + ".")
  if "stl_published_units" in s:
    p = s["stl_published_units"]
    lines += ["", "STL test MAE in the units of the published QM9 tables, beside the STL row of "
              + p["published_source"] + " (a GNN on the molecular graph with 3-D positions and "
              "atomisation energies for U0, U, H, G; ours: an MLP on Coulomb-matrix "
              "eigenvalues, absolute energies):", "",
              "| target | unit | ours (STL, this protocol) | published STL |", "|---|---|---|---|"]
    for t, u, o, ref in zip(p["targets"], p["units"], p["ours_stl_test_mae"],
                            p["published_stl_test_mae"]):
      lines.append(f"| {t} | {u} | {_fmt(o, 3)} | {ref:g} |")
  return "\n".join(lines)


def _epochs(runs) -> str:
  runs = [r for r in runs if not r.get("failed")]
  if not runs:
    return "—"
  return ", ".join(f"{r['epochs_run']} ({r['best_epoch'] + 1})" for r in
                   sorted(runs, key=lambda r: r["seed"])[:3]) + (" …" if len(runs) > 3 else "")


def _label(m, r) -> str:
  cfg = ", ".join(f"{k}={converged.fmt_value(v)}" for k, v in r["config"].items())
  return f"{m}{' ' + cfg if cfg else ''} ({r['n_seeds']})"


def plot_delta(bench, s, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [(m, r) for m, r in s["methods"].items() if r["delta_m_pct"] is not None]
  rows.sort(key=lambda kv: kv[1]["delta_m_pct"])
  fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(rows), 1) + 1.8))
  y = np.arange(len(rows))
  ax.barh(y, [r["delta_m_pct"] for _, r in rows], xerr=supervised.error_bars(r for _, r in rows),
          color=["tab:red" if m == "conicgrad" else "tab:blue" for m, _ in rows])
  ax.set_yticks(y, [_label(m, r) for m, r in rows], fontsize=8)
  ax.invert_yaxis()
  ax.axvline(0.0, color="k", lw=0.8)
  ax.set_xlabel("Δm% vs STL (lower is better), mean ± s.e. over seeds (n; no bar for n = 1)")
  title = f"{bench.name}, converged protocol"
  if s["partial"]:
    title += f" — PARTIAL ({s['run_counts']['done_of_planned']}/{s['run_counts']['planned']} runs)"
  ax.set_title(title, fontsize=9)
  if not rows:
    ax.text(0.5, 0.5, "no Δm% yet (STL or method runs missing)", ha="center",
            transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_scatter(bench, s, runs, path):
  """Left vs right test accuracy: every method's seeds (small) and mean (large), and STL."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 6.5))
  cmap = plt.get_cmap("tab20")
  markers = "os^Dv<>ph*"
  for n, (m, r) in enumerate(sorted(s["methods"].items())):
    pts = np.array([runs[key]["test_metrics"] for key in runs
                    if runs[key]["method"] == m and runs[key].get("config", {}) == r["config"]
                    and _finite(runs[key].get("test_metrics"))])
    color, marker = cmap(n % 20), markers[(n // 20 + n) % len(markers)]
    if m == "conicgrad":
      color = "red"
    ax.scatter(pts[:, 0], pts[:, 1], s=12, color=color, marker=marker, alpha=0.5)
    ax.scatter([pts[:, 0].mean()], [pts[:, 1].mean()], s=50, color=color, marker=marker,
               edgecolor="k", linewidth=0.5, label=_label(m, r))
  if all(v is not None for v in s["stl"]):
    ax.scatter([s["stl"][0]], [s["stl"][1]], s=200, marker="*", color="gold", edgecolor="k",
               label="STL (mean)", zorder=5)
  ax.set_xlabel("left test accuracy")
  ax.set_ylabel("right test accuracy")
  title = f"{bench.name}, converged protocol: seeds (small) and means (large)"
  if s["partial"]:
    title += " — PARTIAL"
  ax.set_title(title, fontsize=9)
  if s["methods"] or all(v is not None for v in s["stl"]):
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=1)
  else:
    ax.text(0.5, 0.5, "no finished runs yet", ha="center", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def load_runs(store) -> dict:
  runs = {}
  for f in sorted(os.listdir(store.folder)):
    if f.endswith(".json"):
      with open(os.path.join(store.folder, f)) as fh:
        r = json.load(fh)
      if "method" in r and "seed" in r:
        runs[r.get("key", f[:-5])] = r
  return runs


def write(bench: converged.Bench, store, out: str, planned: list, quick: bool = False) -> dict:
  """Writes NAME_converged.json / .md / .png (and NAME_converged_scatter.png for two tasks)."""
  runs = load_runs(store)
  s = summarise(bench, runs, planned, quick)
  from benchmarks import timing
  s["machine"] = timing.machine()
  tag = f"{bench.name}{'_quick' if quick else ''}_converged"
  path = lambda suffix: os.path.join(out, tag + suffix)
  # Each file is written under a temporary name and renamed: a reader (or a second
  # summariser) never sees half a file.
  _atomic(path(".json"), lambda p: _dump(s, p))
  _atomic(path(".md"), lambda p: _text(markdown(bench, s) + "\n", p))
  _atomic(path(".png"), lambda p: plot_delta(bench, s, p))
  if bench.k == 2:
    _atomic(path("_scatter.png"), lambda p: plot_scatter(bench, s, runs, p))
  return s


def _text(text, p):
  with open(p, "w") as f:
    f.write(text)


def _dump(obj, p):
  with open(p, "w") as f:
    json.dump(obj, f, indent=1, allow_nan=False)


def _atomic(path, write):
  root, ext = os.path.splitext(path)
  tmp = f"{root}.tmp{os.getpid()}{ext}"
  write(tmp)
  os.replace(tmp, path)
