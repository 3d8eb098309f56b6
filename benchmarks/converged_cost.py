"""The converged protocol's step cost on this CPU: loop vs vmap, one process vs two pinned ones.

``python -m benchmarks converged_cost`` times, at the converged protocol's batch
sizes (256 pairs for the image benchmarks, 512 molecules for QM9), the jitted
training step (method + Adam + apply) of

* linear scalarisation as the converged protocol runs it (one backward pass,
  ``mode="representation"``) and with K stacked task gradients,
* ConicGrad with the stacked task gradients from ``value_and_task_grads``'s
  ``strategy="loop"`` (K VJP calls) and ``strategy="vmap"`` (one vmapped VJP),

in two set-ups: (A) one process using both cores; (B) two processes at once, each
pinned to one core (``sched_setaffinity``) with single-threaded XLA
(``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1``).
Each process compiles every step ahead of time, calls it twice, then times
interleaved rounds from the third call on (medians); the two processes of B wait
for each other before timing. A and B alternate ``--repeats`` times. Throughput
is steps per second of the whole machine: 1/t for A, 2/t for B. Results:
``benchmarks/results/converged_cost.json`` and ``converged_cost.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import converged

CANDIDATES = (("ls (one backward)", "linear_scalarization", "representation", None),
              ("ls (stacked, loop)", "linear_scalarization", "stacked", "loop"),
              ("conicgrad (stacked, loop)", "conicgrad", "stacked", "loop"),
              ("conicgrad (stacked, vmap)", "conicgrad", "stacked", "vmap"))
ROUNDS = {"multifashion": 15, "qm9": 40}


def _batch(name, bench, rng):
  b = bench.protocol.batch_size
  if name == "qm9":
    return (rng.standard_normal((b, 34)).astype(np.float32),
            rng.standard_normal((b, 11)).astype(np.float32))
  return (rng.random((b, 36, 36, 1)).astype(np.float32),
          rng.integers(0, 10, (b, 2)).astype(np.int32))


def child(out_path: str, barrier: str, index: int, parties: int, benches):
  import jax.numpy as jnp
  from benchmarks import timing
  rng = np.random.default_rng(0)
  calls = {}
  for name in benches:
    bench = converged.get_bench(name)
    x, y = _batch(name, bench, rng)
    params = bench.init_params(0)
    for label, method, mode, strategy in CANDIDATES:
      job = converged.Job(name, "cost", method, (), 0, "cost")
      step, init, _ = converged.make_step(bench, job, strategy=strategy or "loop", mode=mode)
      state = init(params)
      scale = jnp.asarray(1.0, jnp.float32)
      _, calls[name, label] = timing.compiled_call(step, params, state, x, y, scale)
  if barrier:
    open(os.path.join(barrier, f"ready{index}"), "w").close()
    while len([f for f in os.listdir(barrier) if f.startswith("ready")]) < parties:
      time.sleep(0.05)
  result = {}
  for name in benches:
    group = {label: calls[name, label] for label, *_ in CANDIDATES}
    times = timing.interleaved_times(group, ROUNDS[name], warmup=2)
    result[name] = {label: timing.summary(t) for label, t in times.items()}
  result["uptime_after"] = _loadavg()
  with open(out_path, "w") as f:
    json.dump(result, f)


def _loadavg():
  with open("/proc/loadavg") as f:
    return f.read().split()[:3]


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _spawn(out_path, barrier, index, parties, benches, pinned):
  env = dict(os.environ)
  preexec = None
  if pinned:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + converged.SINGLE_THREAD_XLA).strip()
    preexec = lambda: os.sched_setaffinity(0, {index})
  cmd = [sys.executable, "-m", "benchmarks", "converged_cost", "--child", out_path,
         "--barrier", barrier, "--index", str(index), "--parties", str(parties),
         "--benches", ",".join(benches)]
  return subprocess.Popen(cmd, env=env, preexec_fn=preexec)


def measure(benches, repeats: int) -> dict:
  runs = []
  for r in range(repeats):
    for setup in ("A: one process, 2 cores", "B: two processes, 1 core each"):
      with tempfile.TemporaryDirectory() as tmp:
        parties = 1 if setup.startswith("A") else 2
        outs = [os.path.join(tmp, f"out{i}.json") for i in range(parties)]
        load = _loadavg()
        procs = [_spawn(outs[i], tmp, i, parties, benches, pinned=parties > 1)
                 for i in range(parties)]
        for p in procs:
          p.wait()
        runs.append({"repeat": r, "setup": setup, "loadavg_before": load,
                     "processes": [_read_json(o) for o in outs]})
      print(f"repeat {r}: {setup} done", flush=True)
  return runs


def summarise(runs, benches) -> dict:
  out = {}
  for name in benches:
    rows = {}
    for label, *_ in CANDIDATES:
      a = [p[name][label]["median_s"] for run in runs if run["setup"].startswith("A")
           for p in run["processes"]]
      b = [p[name][label]["median_s"] for run in runs if run["setup"].startswith("B")
           for p in run["processes"]]
      ta, tb = float(np.median(a)), float(np.median(b))
      rows[label] = {"A_median_s": ta, "B_median_s": tb, "A_steps_per_s": 1.0 / ta,
                     "B_steps_per_s": 2.0 / tb, "B_over_A_throughput": (2.0 / tb) / (1.0 / ta),
                     "A_all": a, "B_all": b}
    out[name] = rows
  return out


def markdown(summary) -> str:
  lines = ["| benchmark | step | A: 1 process × 2 cores, ms/step | B: 2 processes × 1 core, "
           "ms/step (each) | machine throughput B / A |", "|---|---|---|---|---|"]
  for name, rows in summary.items():
    for label, r in rows.items():
      lines.append(f"| {name} | {label} | {1e3 * r['A_median_s']:.1f} | "
                   f"{1e3 * r['B_median_s']:.1f} | {r['B_over_A_throughput']:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks converged_cost")
  parser.add_argument("--benches", default="multifashion,qm9")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--barrier", default="", help=argparse.SUPPRESS)
  parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--parties", type=int, default=1, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  benches = args.benches.split(",")
  if args.child:
    return child(args.child, args.barrier, args.index, args.parties, benches)
  from benchmarks import timing
  runs = measure(benches, args.repeats)
  summary = summarise(runs, benches)
  with open(os.path.join(args.out, "converged_cost.json"), "w") as f:
    json.dump({"device": converged.DEVICE, "machine": timing.machine(),
               "batch": {n: converged.get_bench(n).protocol.batch_size for n in benches},
               "summary": summary, "runs": runs}, f, indent=1)
  table = markdown(summary)
  with open(os.path.join(args.out, "converged_cost.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return summary


if __name__ == "__main__":
  main()
