"""The benchmarks' bookkeeping: Δm%, ranks, resumable runs, data, QM9 features, the converged rule."""

import os
import types

import numpy as np
import pytest

from benchmarks import overlaid
from benchmarks import store as store_m
from benchmarks import supervised


def _task(higher):
  return supervised.Task("t", ("a", "b"), higher, "m", None, None, None, None, None)


def test_delta_m_and_mean_rank_by_hand():
  results = {
      ("stl_0", 0): {"test_metrics": [0.8, 0.0], "time_per_step_s": 1.0},
      ("stl_1", 0): {"test_metrics": [0.0, 0.5], "time_per_step_s": 1.0},
      ("x", 0): {"test_metrics": [0.88, 0.45], "time_per_step_s": 2.0},
      ("linear_scalarization", 0): {"test_metrics": [0.8, 0.55], "time_per_step_s": 1.0},
  }
  s = supervised.summarise(_task((True, True)), results, ["x", "linear_scalarization"], [0])
  # higher is better: Δm = mean(−(0.88−0.8)/0.8, −(0.45−0.5)/0.5)·100 = mean(−10, +10) = 0
  assert s["methods"]["x"]["delta_m_pct"] == pytest.approx(0.0, abs=1e-9)
  assert s["methods"]["linear_scalarization"]["delta_m_pct"] == pytest.approx(-5.0)
  assert s["methods"]["x"]["mean_rank"] == pytest.approx(1.5)
  assert s["methods"]["x"]["time_ratio_to_ls"] == pytest.approx(2.0)
  s = supervised.summarise(_task((False, False)), results, ["x", "linear_scalarization"], [0])
  assert s["methods"]["linear_scalarization"]["delta_m_pct"] == pytest.approx(5.0)
  # Side-by-side step times, when measured, replace the times taken during the runs.
  side = {"x": {"median_s": 3.0}, "linear_scalarization": {"median_s": 1.0}}
  s = supervised.summarise(_task((True, True)), results, ["x", "linear_scalarization"], [0],
                           side)
  assert s["methods"]["x"]["time_ratio_to_ls"] == pytest.approx(3.0)
  assert s["methods"]["x"]["time_per_step_in_runs_s"] == pytest.approx(2.0)


def test_delta_m_with_three_seeds_by_hand():
  """Δm% per seed over the tasks (STL: the mean of its seeds), then the mean and the
  standard error (ddof = 1) over the seeds."""
  results = {
      ("stl_0", 0): {"test_metrics": [0.8, 0.0], "time_per_step_s": 1.0},
      ("stl_0", 1): {"test_metrics": [0.6, 0.0], "time_per_step_s": 1.0},
      ("stl_0", 2): {"test_metrics": [0.7, 0.0], "time_per_step_s": 1.0},
      ("stl_1", 0): {"test_metrics": [0.0, 0.5], "time_per_step_s": 1.0},
      ("stl_1", 1): {"test_metrics": [0.0, 0.3], "time_per_step_s": 1.0},
      ("stl_1", 2): {"test_metrics": [0.0, 0.4], "time_per_step_s": 1.0},
      ("x", 0): {"test_metrics": [0.77, 0.44], "time_per_step_s": 2.0},
      ("x", 1): {"test_metrics": [0.63, 0.32], "time_per_step_s": 2.0},
      ("x", 2): {"test_metrics": [0.7, 0.4], "time_per_step_s": 2.0},
  }
  results.update({("linear_scalarization", s): {"test_metrics": [0.7, 0.4],
                                                "time_per_step_s": 1.0} for s in range(3)})
  s = supervised.summarise(_task((True, True)), results, ["linear_scalarization", "x"],
                           [0, 1, 2])
  # STL: 0.7 and 0.4. Seed 0: −(0.07/0.7, 0.04/0.4) → −10 %; seed 1: −(−0.07/0.7, −0.08/0.4)
  # → +15 %; seed 2: 0. Mean 5/3; standard error √(Σ(d − mean)²/2)/√3 (ddof = 1).
  per_seed = np.array([-10.0, 15.0, 0.0])
  mean = per_seed.sum() / 3
  sem = np.sqrt(((per_seed - mean) ** 2).sum() / 2) / np.sqrt(3)
  assert s["methods"]["x"]["delta_m_pct"] == pytest.approx(mean)
  assert s["methods"]["x"]["delta_m_sem"] == pytest.approx(sem)
  assert sem != pytest.approx(np.sqrt(((per_seed - mean) ** 2).sum() / 3) / np.sqrt(3))
  assert s["methods"]["linear_scalarization"]["delta_m_pct"] == pytest.approx(0.0, abs=1e-9)


def test_short_protocol_table_sorts_by_delta_m_and_times_are_medians_over_seeds():
  """The table lists STL, then the methods by Δm% (best first), whatever their order,
  name or mean rank; a method's step time is the median over its seeds' runs (a seed
  without a time left out), its ratio to linear scalarisation's median."""
  metrics = {"b": [0.84, 0.45], "a": [0.96, 0.40], "linear_scalarization": [0.78, 0.55],
             "stl_0": [0.8, 0.0], "stl_1": [0.0, 0.5]}
  step_s = {"b": [0.1, 0.2, 0.9], "a": [None, 0.3, 0.5], "linear_scalarization": [0.1, 0.1, 0.7],
            "stl_0": [1.0] * 3, "stl_1": [1.0] * 3}
  results = {(m, s): {"test_metrics": metrics[m], "time_per_step_s": step_s[m][s]}
             for m in metrics for s in range(3)}
  names = ["b", "a", "linear_scalarization"]
  s = supervised.summarise(_task((True, True)), results, names, [0, 1, 2])
  # Higher is better, STL (0.8, 0.5): Δm% = 100·mean(−(M₀ − 0.8)/0.8, −(M₁ − 0.5)/0.5).
  delta = {m: 100 * np.mean([-(metrics[m][0] - 0.8) / 0.8, -(metrics[m][1] - 0.5) / 0.5])
           for m in names}                      # b: 2.5, a: 0, linear_scalarization: −3.75
  for m in names:
    assert s["methods"][m]["delta_m_pct"] == pytest.approx(delta[m])
  # Medians: b 0.2 (mean 0.4), a 0.4 of its two times, linear scalarisation 0.1 (mean 0.3).
  for m, median in (("b", 0.2), ("a", 0.4), ("linear_scalarization", 0.1)):
    assert s["methods"][m]["time_per_step_in_runs_s"] == pytest.approx(median)
    assert s["methods"][m]["time_per_step_s"] == pytest.approx(median)
    assert s["methods"][m]["time_ratio_to_ls"] == pytest.approx(median / 0.1)
  table = supervised.markdown_table(_task((True, True)), s).splitlines()
  assert table[2].startswith("| STL | 0.8 | 0.5 |")
  rows = [line.split(" | ")[0][2:] for line in table[3:]]
  assert rows == sorted(names, key=delta.get) == ["linear_scalarization", "a", "b"]
  assert table[5].endswith("| 200.0 (2.00×) |")           # b: 0.2 s, twice the 0.1 s of LS


def test_mean_ranks_average_ties():
  means = [[0.9, 1.0], [0.9, 3.0], [0.8, 2.0]]        # metric 0: higher is better; 1: lower
  ranks = supervised.mean_ranks(means, (True, False))
  np.testing.assert_allclose(ranks, [(1.5 + 1) / 2, (1.5 + 3) / 2, (3 + 2) / 2])


def test_mean_ranks_put_a_missing_metric_last():
  means = [[np.nan, 0.8], [0.9, 0.9], [0.8, 0.7]]     # both metrics: higher is better
  ranks = supervised.mean_ranks(means, (True, True))
  np.testing.assert_allclose(ranks, [(3 + 2) / 2, (1 + 1) / 2, (2 + 3) / 2])


def test_standard_error_is_unknown_for_one_seed():
  assert supervised.standard_error([[0.5, 0.7]]) is None
  assert supervised.standard_error([1.0]) is None
  # s.d. with ddof = 1 of (1, 3) is √2; divided by √2 seeds gives 1.
  assert supervised.standard_error([1.0, 3.0]) == pytest.approx(1.0)
  np.testing.assert_allclose(supervised.standard_error([[1.0, 0.0], [3.0, 0.0]]), [1.0, 0.0])
  assert supervised.plus_minus(0.5, None) == "0.5"
  assert supervised.plus_minus(0.5, 0.25) == "0.5 ± 0.25"
  assert np.isnan(supervised.error_bars([{"delta_m_sem": None}])[0])


def test_run_store_resumes(tmp_path):
  runs = store_m.RunStore(str(tmp_path), "bench")
  calls = []
  first = runs.run("conicgrad_seed0", lambda: calls.append(1) or {"v": 1})
  again = store_m.RunStore(str(tmp_path), "bench").run("conicgrad_seed0",
                                                        lambda: calls.append(2) or {"v": 2})
  assert first["v"] == again["v"] == 1 and calls == [1]
  assert first["library"] == store_m.library_fingerprint()


def test_a_run_another_library_version_stored_is_recomputed_only_when_asked(tmp_path):
  runs = store_m.RunStore(str(tmp_path), "bench")
  runs.put("toy_run", {"v": 1, "library": "000000000000"})
  runs.put("current_run", {"v": 2})
  assert runs.from_other_libraries() == ["toy_run"]
  assert runs.run("toy_run", lambda: {"v": 3})["v"] == 1
  redone = runs.run("toy_run", lambda: {"v": 3}, current_library_only=True)
  assert redone == {"v": 3, "library": store_m.library_fingerprint()}
  assert runs.run("current_run", lambda: {"v": 4}, current_library_only=True)["v"] == 2
  assert runs.from_other_libraries() == []


def test_the_library_fingerprint_follows_the_sources(tmp_path):
  (tmp_path / "sub").mkdir()
  (tmp_path / "a.py").write_text("x = 1\n")
  (tmp_path / "sub" / "b.py").write_text("y = 2\n")
  (tmp_path / "notes.txt").write_text("ignored")
  before = store_m.library_fingerprint.__wrapped__(str(tmp_path))
  (tmp_path / "notes.txt").write_text("still ignored")
  assert store_m.library_fingerprint.__wrapped__(str(tmp_path)) == before
  (tmp_path / "sub" / "b.py").write_text("y = 3\n")
  assert store_m.library_fingerprint.__wrapped__(str(tmp_path)) != before


def test_the_library_fingerprint_follows_every_source_file_and_its_name(tmp_path):
  """A change in any of the sources, the first, a later one in the same folder or one in a
  subfolder, changes the fingerprint; so does renaming a source without changing it."""
  fingerprint = lambda: store_m.library_fingerprint.__wrapped__(str(tmp_path))
  (tmp_path / "sub").mkdir()
  files = [tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py", tmp_path / "sub" / "d.py"]
  for f in files:
    f.write_text(f"name = {f.stem!r}\n")
  before = fingerprint()
  for f in files:
    f.write_text(f"name = {f.stem!r}  # changed\n")
    assert fingerprint() != before, f.name
    f.write_text(f"name = {f.stem!r}\n")
    assert fingerprint() == before, f.name
  (tmp_path / "c.py").rename(tmp_path / "e.py")
  assert fingerprint() != before


def test_run_store_keys_longer_than_a_file_name_stay_distinct(tmp_path):
  """A key naming 39 methods is longer than the 255 bytes a file name may have."""
  runs = store_m.RunStore(str(tmp_path), "bench")
  long_a = "5.2M_" + "-".join(f"method_number_{i}" for i in range(39)) + "_b8"
  long_b = long_a.replace("_b8", "_b4")
  runs.put(long_a, {"x": 1})
  runs.put(long_b, {"x": 2})
  assert runs.get(long_a)["x"] == 1 and runs.get(long_b)["x"] == 2
  assert all(len(name) < 255 for name in os.listdir(runs.folder))


def test_toy_distance_to_front_measures_to_its_segments_not_its_vertices():
  from benchmarks import toy
  front = toy.true_front()
  midpoint = 0.5 * (front[200] + front[201])
  assert np.min(np.linalg.norm(front - midpoint, axis=1)) > 1e-3   # the vertices are apart
  assert toy.distance_to_front(midpoint, front) < 1e-6
  # Off the front along the segment's normal, at 0.01.
  tangent = (front[201] - front[200]) / np.linalg.norm(front[201] - front[200])
  off = midpoint + 0.01 * np.array([-tangent[1], tangent[0]])
  assert toy.distance_to_front(off, front) == pytest.approx(0.01, rel=1e-3)


def test_toy_summary_counts_starts_that_end_at_the_minimum_and_their_first_step_there():
  """A start reaches the minimum when its final mean loss is within the tolerance; its
  first step within it is the first recorded point (every 50 steps) within it, even one it
  leaves again; a start that ends outside has none."""
  from benchmarks import toy
  best, tol, steps = -10.0, 0.01, 401            # 401 recorded points: every 2nd is kept
  curves = np.full((steps, 5), best + 1.0)
  curves[3:, 0] = best + 0.005                  # within from point 3 on: step 150
  curves[100:200, 1] = best                     # within for a while, ends outside
  curves[-1, 1] = best + 0.02
  curves[:, 2] = best + 0.01 * np.arange(steps) / steps   # within from the start
  curves[5, 3] = best                           # within at point 5, outside, within from 10
  curves[10:, 3] = best + 0.002
  curves[:, 4] = np.linspace(best + 2.0, best + 0.5, steps)
  # Final losses: two unequal ones whose mean is the curve's last point (start 1's smaller
  # one is below the minimum, its mean is 0.02 above it).
  final = np.stack([curves[-1] - 0.5, curves[-1] + 0.5], 1)
  paths = np.random.default_rng(0).standard_normal((steps, 5, 2))
  s = toy.summarise(paths, curves, final, best, tol)
  starts = s["starts"]
  assert [st["reached_global_minimum"] for st in starts] == [True, False, True, True, False]
  assert s["reached"] == 3
  assert [st["first_step_within_tol"] for st in starts] == [150, None, 0, 250, None]
  for i, st in enumerate(starts):
    assert st["final_mean_loss"] == pytest.approx(curves[-1, i])
    np.testing.assert_allclose(st["final_losses"], final[i])
    np.testing.assert_allclose(st["final_x"], paths[-1, i])
    np.testing.assert_allclose(st["start"], toy.toy_ex.STARTS[i])
  # At most about 200 points of the path and of the mean curve over the starts.
  np.testing.assert_allclose(s["path"], paths[0:steps:2])
  np.testing.assert_allclose(s["mean_curve"], curves.mean(axis=1)[0:steps:2])
  assert len(s["path"]) == len(s["mean_curve"]) == 201


def test_overlay_places_both_images():
  rng = np.random.default_rng(0)
  imgs = np.zeros((2, 28, 28), np.float32)
  imgs[0, 0, 0] = 1.0        # top-left pixel of image 0
  imgs[1, -1, -1] = 2.0      # bottom-right pixel of image 1
  x, y = overlaid.overlay(imgs, np.array([3, 7]), 20, rng)
  assert x.shape == (20, 36, 36, 1) and y.shape == (20, 2)
  for canvas, labels in zip(x[..., 0], y):
    if labels[0] == 3:
      assert canvas[:5, :5].max() == 1.0
    if labels[1] == 7:
      assert canvas[-5:, -5:].max() == 2.0


def test_coulomb_eigenvalues_of_a_diatomic():
  from benchmarks import qm9
  ev = qm9._coulomb_eigenvalues(["H", "H"], [[0, 0, 0], [0, 0, 0.74]], size=4)
  # [[0.5, 1/0.74], [1/0.74, 0.5]] has eigenvalues 0.5 ± 1/0.74.
  np.testing.assert_allclose(ev, [0.5 + 1 / 0.74, 0.5 - 1 / 0.74, 0, 0], rtol=1e-12)
  # Carbon monoxide (Rupp et al.'s matrix: ½·Z^2.4 on the diagonal, Z_i Z_j/r off it), its
  # 2×2 eigenvalues written out: (a + b)/2 ± √(((a − b)/2)² + c²).
  ev = qm9._coulomb_eigenvalues(["C", "O"], [[0, 0, 0], [0, 0, 1.128]], size=2)
  a, b, c = 0.5 * 6 ** 2.4, 0.5 * 8 ** 2.4, 48 / 1.128
  root = np.sqrt(((a - b) / 2) ** 2 + c ** 2)
  np.testing.assert_allclose(ev, [(a + b) / 2 + root, (a + b) / 2 - root], rtol=1e-12)


def _tiny_regression_task():
  import jax.numpy as jnp
  rng = np.random.default_rng(0)
  x = rng.standard_normal((96, 3)).astype(np.float32)
  y = np.stack([x @ [1.0, 0.0, 0.0], x @ [0.0, 1.0, 0.0]], 1).astype(np.float32)
  split = ((x[:64], y[:64]), (x[64:80], y[64:80]), (x[80:], y[80:]))

  def losses(p, xb, yb):
    pred = (xb @ p["shared"]) @ p["heads"]
    return jnp.mean((pred - yb) ** 2, axis=0)

  def init(seed):
    r = np.random.default_rng(seed)
    return {"shared": jnp.asarray(r.standard_normal((3, 4)), jnp.float32),
            "heads": jnp.asarray(r.standard_normal((4, 2)), jnp.float32)}

  return supervised.Task("tiny", ("a", "b"), (False, False), "mse", init, losses, losses,
                         lambda path, leaf: "shared" in str(path), split)


@pytest.mark.parametrize("method, seed", [("linear_scalarization", 1), ("stl_1", 0)])
def test_a_short_protocol_run_replayed_by_hand(method, seed):
  """train_and_evaluate against a loop written out here: parameters from the run's seed,
  each epoch's batches from the seed's generator, validation losses on the validation
  split, the epoch of least summed validation loss kept, its test metrics reported; the
  STL run trains the shared parameters on its own task only."""
  task = _tiny_regression_task()
  protocol = supervised.Protocol(epochs=3, batch_size=16, lr=0.1)
  result = supervised.train_and_evaluate(task, method, seed, protocol)
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = task.data
  step, init = supervised.make_step(task, method, protocol, seed)
  params = task.init_params(seed)
  state = init(params)
  rng = np.random.default_rng(seed)
  val, test = [], []
  for e in range(protocol.epochs):
    order = rng.permutation(len(x_tr))
    for b in range(len(x_tr) // 16):
      idx = order[16 * b:16 * (b + 1)]
      params, state, _ = step(params, state, x_tr[idx], y_tr[idx])
    val.append(np.asarray(task.task_losses(params, x_va, y_va)))
    test.append(np.asarray(task.metrics(params, x_te, y_te)))
    np.testing.assert_allclose(result["history"][e]["val_losses"], val[-1], rtol=1e-5)
  best = int(np.argmin([v.sum() for v in val]))
  assert result["best_epoch"] == best
  np.testing.assert_allclose(result["test_metrics"], test[best], rtol=1e-5)
  if method == "linear_scalarization":        # the selection matters on this run
    assert best < protocol.epochs - 1 and np.max(np.abs(test[-1] - test[best])) > 1e-6
  else:
    _check_stl_1_steps(lambda p, s, b: step(p, s, x_tr[b], y_tr[b])[:2], init,
                       lambda p, b: task.task_losses(p, x_tr[b], y_tr[b]),
                       task.init_params(seed), protocol.lr, 16)


def test_a_short_protocol_runs_step_time_is_the_median_over_its_epochs_after_the_first(
    monkeypatch):
  """A fake clock makes epochs 1, 2, 3 take 0.1, 0.5 and 0.2 s per step (4 steps each);
  epoch 0, which compiles, is not timed: the run's step time is their median, 0.2 s."""
  task = _tiny_regression_task()
  ticks = iter([0.0, 10.0, 10.0 + 4 * 0.1, 20.0, 20.0 + 4 * 0.5, 30.0, 30.0 + 4 * 0.2])
  monkeypatch.setattr(supervised, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
  result = supervised.train_and_evaluate(task, "linear_scalarization", 0,
                                         supervised.Protocol(epochs=4, batch_size=16, lr=0.1))
  assert next(ticks, None) is None          # one reading in epoch 0, two per later epoch
  assert result["time_per_step_s"] == pytest.approx(0.2)


def _check_stl_1_steps(step, init, losses, params, lr, batch):
  """Three steps of an STL_1 run against Adam on ∇L_1 (shared leaf) and ∇ΣL (heads)."""
  import jax
  import jax.numpy as jnp
  import optax
  adam = optax.adam(lr)
  state, expected, adam_state = init(params), params, adam.init(params)
  for i in range(3):
    b = slice(batch * i, batch * (i + 1))
    params, state = step(params, state, b)
    grad = {"shared": jax.grad(lambda p: losses(p, b)[1])(expected)["shared"],
            "heads": jax.grad(lambda p: jnp.sum(losses(p, b)))(expected)["heads"]}
    update, adam_state = adam.update(grad, adam_state, expected)
    expected = optax.apply_updates(expected, update)
    for a, e in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(expected)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-5, atol=1e-6)


def test_run_benchmark_never_resumes_from_another_protocol(tmp_path):
  task = _tiny_regression_task()
  args, methods = supervised.parse_args("tiny", ["--methods", "linear_scalarization",
                                                 "--seeds", "1", "--out", str(tmp_path)])
  for epochs in (1, 2):
    supervised.run_benchmark(task, args, methods, supervised.Protocol(epochs, 16, 1e-2))
  folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
  assert folders == ["tiny_e1_b16_lr0.01_n64_runs", "tiny_e2_b16_lr0.01_n64_runs"]
  again = store_m.RunStore(str(tmp_path), "tiny_e2_b16_lr0.01_n64").get(
      "linear_scalarization_seed0")
  assert len(again["history"]) == 2
  table = (tmp_path / "tiny.md").read_text().splitlines()
  assert table[0].startswith("| method | a (mse) | b (mse) | Δm% ↓")
  assert table[2].startswith("| STL |") and table[3].startswith("| linear_scalarization |")
  assert table[3].endswith("(1.00×) |")


@pytest.mark.slow   # 18 compilations of a 9-layer CNN: about 40 s
def test_loss_only_methods_take_one_backward_with_the_stacked_update():
  """celeba_scaling times LOSS_ONLY methods in representation mode: it must be the same update."""
  import jax
  import optax
  import conicgrad_jax as cg
  from benchmarks import celeba_scaling, models

  k = 3
  params = models.init_params(k, width=0.1)
  x, y = models.synthetic_batch(2, k)
  x = x[:, :16, :16]
  identity = optax.identity()
  for name in celeba_scaling.LOSS_ONLY:
    one_backward, init_one = celeba_scaling.task_step(name, k, identity)
    task = cg.make_task_update(
        models.task_losses, cg.methods()[name].factory(num_tasks=k), shared=models.is_shared)
    stacked = task.step
    p, state, s_ref = params, init_one(params), task.init(params)
    for _ in range(2):   # the second step sees the state the first one left
      new_p, state = one_backward(p, state, x, y)
      _, u_ref, s_ref = stacked(p, s_ref, x, y)
      jax.tree_util.tree_map(
          lambda a, b, n=name: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6, err_msg=n),
          jax.tree_util.tree_map(lambda a, b: a - b, new_p, p), u_ref)
      p = new_p


def test_stored_step_times_are_retimed_when_they_miss_a_method(tmp_path):
  task = _tiny_regression_task()
  for methods in ("linear_scalarization", "linear_scalarization,famo"):
    args, names = supervised.parse_args("tiny", ["--methods", methods, "--seeds", "1",
                                                 "--out", str(tmp_path)])
    summary = supervised.run_benchmark(task, args, names, supervised.Protocol(1, 16, 1e-2))
  assert summary["methods"]["famo"]["time_per_step_s"] > 0
  stored = store_m.RunStore(str(tmp_path), "tiny_e1_b16_lr0.01_n64").get("step_times_rounds10")
  assert set(stored) == {"linear_scalarization", "famo", "library"}


# ----------------------------------------------------------------------------- converged protocol

def _protocol(**kw):
  from benchmarks import converged
  base = dict(batch_size=16, max_epochs=40, lr_patience=3, min_delta=0.0, score="acc",
              higher_is_better=True, min_epochs=10)
  base.update(kw)
  return converged.Protocol(**base)


def _replay(protocol, curve):
  """Feeds a validation curve to the rule; (epochs run, stop reason, lrs used, selected epoch)."""
  from benchmarks import converged
  rule, lrs = converged.Plateau(protocol), []
  for score in curve:
    lrs.append(rule.lr_scale)
    rule.update(score)
    stop = rule.stop()
    if stop:
      return rule.epochs, stop, lrs, rule.selected_epoch
  return rule.epochs, None, lrs, rule.selected_epoch


def test_plateau_rule_stops_after_the_window_and_halves_the_lr_by_hand():
  p = _protocol()
  # Improves up to epoch 5, then flat: P = 3 bad epochs (6, 7, 8) halve the lr for epoch 9;
  # the window is max(ceil(0.2 n), P + 2 = 5), so epoch 5 lies before the last 5 epochs
  # first at n = 11 (epochs 6..10).
  curve = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] + [0.55] * 30
  n, stop, lrs, best = _replay(p, curve)
  assert (n, stop, best) == (11, "plateau", 5)
  assert lrs == [1.0] * 9 + [0.5, 0.5]
  # Later, the 20 % window takes over: a best at epoch 29 of a flat tail stops at n = 38
  # (ceil(0.2 · 38) = 8 epochs 30..37 without improvement; at n = 37 the window is also 8).
  curve = list(np.linspace(0.1, 0.9, 30)) + [0.5] * 20
  n, stop, _, best = _replay(p, curve)
  assert (n, stop, best) == (38, "plateau", 29)


def test_plateau_rule_hits_the_cap_and_selects_the_best_epoch():
  p = _protocol(max_epochs=12)
  n, stop, lrs, best = _replay(p, [0.1 * i for i in range(20)])       # always improving
  assert (n, stop, best) == (12, "cap", 11) and set(lrs) == {1.0}
  # Selection keeps the best score even below min_delta; the rule counts only real gains.
  p = _protocol(min_delta=0.01, max_epochs=30)
  curve = [0.5, 0.6, 0.605, 0.609, 0.6095, 0.6099] + [0.3] * 30
  n, stop, lrs, best = _replay(p, curve)
  assert best == 5 and stop == "plateau" and n == 10     # min_epochs bounds it from below
  assert lrs[5] == 0.5                                   # epochs 2, 3, 4 were no gain
  # Lower is better (QM9's mean log MAE); non-finite scores never count.
  p = _protocol(higher_is_better=False, max_epochs=15)
  n, stop, _, best = _replay(p, [1.0, float("nan"), 0.5, 0.4] + [0.45] * 20)
  assert best == 3 and stop == "plateau" and n == 10


def test_plateau_rule_counts_consecutive_bad_epochs_and_keeps_the_earlier_tied_epoch():
  p = _protocol()
  # A gain at epoch 2 resets the count: epochs 3, 4, 5 halve the lr for epoch 6 (counting
  # epoch 1 too would halve it for epoch 5).
  _, _, lrs, _ = _replay(p, [0.1, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0])
  assert lrs == [1.0] * 6 + [0.5]
  # A tie is no improvement: the earlier epoch stays selected.
  assert _replay(p, [0.5, 0.6, 0.6])[3] == 1


def test_lr_floor_stops_a_run_whose_score_keeps_fluctuating():
  # Gains just above min_delta every fourth epoch keep the plateau window from closing;
  # each run of 3 epochs without a gain halves the lr, and the fifth halving stops it.
  p = _protocol(min_delta=0.01, lr_halvings=5, max_epochs=100)
  curve = []
  for i in range(40):
    curve += [0.5 + 0.011 * i] + [0.4] * 3
  n, stop, lrs, _ = _replay(p, curve)
  assert stop == "lr floor" and lrs[-1] == 0.5 ** 4 and n < 100
  # Without the floor the same curve runs to the cap.
  assert _replay(_protocol(min_delta=0.01, max_epochs=100), curve)[1] == "cap"


def test_converged_job_order_and_tuned_seeds():
  from benchmarks import converged
  runs = {}
  plan = converged.plan("b", 2, ["linear_scalarization", "conicgrad", "krum", "dwa", "mgda"],
                        runs.get, True)
  jobs = converged.ordered({"b": plan})
  keys = [getattr(j, "key", None) for j in jobs]
  assert keys[:6] == ["stl_0_seed0", "stl_1_seed0", "stl_0_seed1", "stl_1_seed1",
                      "stl_0_seed2", "stl_1_seed2"]
  assert keys[6:10] == ["linear_scalarization_seed0", "conicgrad[c=0.25]_seed0",
                        "conicgrad[c=0.5]_seed0", "conicgrad[c=0.75]_seed0"]
  phases = [j.phase for j in jobs]
  assert phases == sorted(phases, key=converged.PHASES.index)
  assert keys[-1] == "krum_seed0"                                   # other methods last, seed 0
  pending = [j for j in jobs if isinstance(j, converged.Pending)]
  assert {(j.method, j.seed) for j in pending} >= {("conicgrad", 1), ("conicgrad", 2)}
  assert "mgda_seed1" in keys and "mgda_seed0" in keys
  # Once the grid is done the best validation score picks the value for seeds 1 and 2.
  for v, score in ((0.25, 0.7), (0.5, 0.8), (0.75, 0.6)):
    runs[converged.run_key("conicgrad", (("c", v),), 0)] = {"best_val_score": score}
  jobs = converged.ordered({"b": converged.plan("b", 2, ["conicgrad"], runs.get, True)})
  keys = [getattr(j, "key", None) for j in jobs]
  assert "conicgrad[c=0.5]_seed1" in keys and "conicgrad[c=0.5]_seed2" in keys
  # Lower is better: the smallest score wins.
  jobs = converged.ordered({"b": converged.plan("b", 2, ["conicgrad"], runs.get, False)})
  assert "conicgrad[c=0.75]_seed2" in [getattr(j, "key", None) for j in jobs]
  # The suite takes each phase for every benchmark before the next phase.
  both = converged.ordered({"x": converged.plan("x", 1, [], {}.get, True),
                            "y": converged.plan("y", 1, [], {}.get, True)})
  assert [j.bench for j in both[:6]] == ["x"] * 3 + ["y"] * 3


def test_converged_splits_have_disjoint_sources():
  from benchmarks import overlaid
  rng = np.random.default_rng(0)
  img = lambda n: (rng.random((n, 28, 28)).astype(np.float32), rng.integers(0, 10, n))
  _, used = overlaid.build_converged_data("multimnist", (300, 100, 100),
                                          pools={"mnist": img(5000)}, return_sources=True)
  sets = {s: set(used[s][1]) | set(used[s][2]) for s in used}
  assert not (sets["train"] & sets["val"] or sets["train"] & sets["test"]
              or sets["val"] & sets["test"])
  src = overlaid.converged_sources("multimnist", np.random.default_rng(1234))
  assert [len(src[s][1]) for s in ("train", "val", "test")] == [3000, 500, 1500]
  assert len(set(np.concatenate([src[s][1] for s in src]))) == 5000
  # Fashion-MNIST-sized pools without the memory: one image broadcast, labels 0..9.
  big = lambda n: (np.broadcast_to(img(1)[0], (n, 28, 28)), np.arange(n) % 10)
  (tr, va, te), used = overlaid.build_converged_data(
      "multifashion", (200, 50, 50), pools={"train": big(60000), "test": big(10000)},
      return_sources=True)
  assert tr[0].shape == (200, 36, 36, 1) and te[1].shape == (50, 2)
  assert used["train"][0] == used["val"][0] == "train" and used["test"][0] == "test"
  assert not (set(used["train"][1]) | set(used["train"][2])) & (set(used["val"][1])
                                                                 | set(used["val"][2]))
  src = overlaid.converged_sources("multifashion", np.random.default_rng(1234))
  assert len(src["train"][1]) == 50000 and len(src["val"][1]) == 10000
  assert not set(src["train"][1]) & set(src["val"][1])


def test_fresh_training_pairs_come_from_the_training_images_only():
  from benchmarks import overlaid
  rng = np.random.default_rng(0)
  # Labels name the source image, so the pairs' labels show which images were drawn.
  pools = {"mnist": (rng.random((5000, 28, 28)).astype(np.float32), np.arange(5000))}
  (_, y_train), (_, y_val), (_, y_test) = overlaid.build_converged_data(
      "multimnist", (2000, 500, 500), pools=pools)
  train_images = set(overlaid.converged_sources("multimnist",
                                                np.random.default_rng(1234))["train"][1])
  assert set(np.ravel(y_train)) <= train_images
  epochs = [overlaid.resample_train_pairs("multimnist", 2000, np.random.default_rng(e),
                                          pools=pools) for e in (1, 2)]
  for x, y in epochs:
    assert x.shape == (2000, 36, 36, 1) and set(np.ravel(y)) <= train_images
    assert not set(np.ravel(y)) & (set(np.ravel(y_val)) | set(np.ravel(y_test)))
  assert not np.array_equal(epochs[0][1], epochs[1][1])     # new pairs each epoch


def test_overlay_pairs_places_both_images():
  from benchmarks import overlaid
  imgs = np.zeros((2, 28, 28), np.float32)
  imgs[0, 0, 0], imgs[1, -1, -1] = 1.0, 2.0
  shifts = np.array([[0, 0, 0, 0], [4, 3, 2, 1]])
  x = overlaid.overlay_pairs(imgs, np.array([0, 0]), np.array([1, 1]), shifts)[..., 0]
  assert x[0, 0, 0] == 1.0 and x[0, 35, 35] == 2.0
  assert x[1, 4, 3] == 1.0 and x[1, 35 - 2, 35 - 1] == 2.0


def _marked_pool(n):
  """Images 0..n−1, each blank but for its value n + 1 at pixel (0, 0); labels 0..n−1."""
  images = np.zeros((n, 28, 28), np.float32)
  images[:, 0, 0] = np.arange(1, n + 1)
  return images, np.arange(n)


def _labels_by_placement(x):
  """Each canvas's (top-left, bottom-right) image label read off its marker pixels: the
  top-left image's marker lies at its shift (r, c) ∈ [0, 4]², the bottom-right one's at
  (8 − r', 8 − c') ∈ [4, 8]², so the top-left one has the smaller row + column. None where
  the two markers fall on one pixel."""
  out = []
  for canvas in x[..., 0]:
    rows, cols = np.nonzero(canvas)
    if len(rows) != 2:
      out.append(None)
      continue
    first, second = np.argsort(rows + cols)
    assert rows[first] <= 4 and cols[first] <= 4 and rows[second] >= 4 and cols[second] >= 4
    out.append((int(canvas[rows[first], cols[first]]) - 1,
                int(canvas[rows[second], cols[second]]) - 1))
  return out


def _check_labels_follow_placement(x, y):
  decoded = _labels_by_placement(x)
  checked = [(tuple(labels), d) for labels, d in zip(y.tolist(), decoded) if d is not None]
  assert len(checked) >= 0.8 * len(y)
  assert all(labels == d for labels, d in checked)


def test_a_pairs_first_label_is_its_top_left_image_and_its_second_the_bottom_right_one():
  """Task 0 ("left") is the top-left image's label, task 1 ("right") the bottom-right
  one's: in the short protocol's pairs, the converged protocol's splits and its fresh
  training pairs."""
  from benchmarks import overlaid
  images, labels = _marked_pool(10)
  _check_labels_follow_placement(*overlaid.overlay(images, labels, 40,
                                                   np.random.default_rng(0)))
  pools = {"mnist": _marked_pool(5000)}
  for x, y in overlaid.build_converged_data("multimnist", (40, 40, 40), pools=pools):
    _check_labels_follow_placement(x, y)
  _check_labels_follow_placement(*overlaid.resample_train_pairs(
      "multimnist", 40, np.random.default_rng(1), pools=pools))


def _converged_bench(tmp_path=None):
  import jax.numpy as jnp
  from benchmarks import converged
  task = _tiny_regression_task()

  def encode(p, x, y):
    return x @ p["shared"]

  def heads(p, z, x, y):
    return jnp.mean((z @ p["heads"] - y) ** 2, axis=0)

  def eval_sums(p, x, y):
    err = (x @ p["shared"]) @ p["heads"] - y
    return jnp.sum(err ** 2, 0), jnp.sum(jnp.abs(err), 0)

  protocol = converged.Protocol(batch_size=16, max_epochs=4, lr_patience=1, min_delta=0.0,
                                score="mean log MAE", higher_is_better=False, min_epochs=2,
                                checkpoint_every=1, lr=1e-2)
  return converged.Bench("tiny", ("a", "b"), (False, False), "MAE", protocol, (64, 16, 16),
                         "tiny", lambda: task.data, task.init_params, encode, heads, eval_sums,
                         task.is_shared, log_score=True, eval_chunk=8)


@pytest.mark.slow   # two compiled steps for each of 15 methods
def test_converged_loss_only_runs_take_the_stacked_paths_update():
  """The converged runs train every loss-only method (linear scalarisation, the STL
  baselines, the loss weightings) by one backward pass of the weighted loss: the same
  steps as with the K stacked task gradients."""
  import jax
  import conicgrad_jax as cg
  from benchmarks import converged
  bench = _converged_bench()
  (x, y), _, _ = bench.load_data()
  loss_only = [name for name, info in cg.methods().items() if info.loss_only]
  assert {"linear_scalarization", "uncertainty_weighting", "famo"} <= set(loss_only)
  for method in ["stl_0", "stl_1"] + loss_only:
    job = converged.Job("tiny", f"{method}_seed0", method, (), 0, "core")
    one_backward, init, mode = converged.make_step(bench, job)
    assert mode == "representation", method
    stacked, _, _ = converged.make_step(bench, job, mode="stacked")
    params = bench.init_params(0)
    p1, s1, p2, s2 = params, init(params), params, init(params)
    for i in range(3):   # later steps see the state the earlier ones left
      batch = slice(16 * i, 16 * (i + 1))
      p1, s1, losses1 = one_backward(p1, s1, x[batch], y[batch], 1.0)
      p2, s2, losses2 = stacked(p2, s2, x[batch], y[batch], 1.0)
      np.testing.assert_allclose(losses1, losses2, rtol=1e-5, err_msg=method)
      jax.tree_util.tree_map(
          lambda a, b, n=method: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6,
                                                            err_msg=n), p1, p2)


@pytest.mark.parametrize("method, seed", [("linear_scalarization", 1), ("stl_1", 0)])
def test_a_converged_run_replayed_by_hand(method, seed):
  """train_run against a loop written out here: parameters from the run's seed, each
  epoch's batches from the permutation of its (seed, epoch) generator, the step scaled by
  the logged learning rate; validation scores on the validation split (the STL run on its
  own task), test metrics of the selected epoch's parameters."""
  import jax.numpy as jnp
  from benchmarks import converged
  import dataclasses
  bench = _converged_bench()
  # No gain ever counts (min_delta): the lr halves after every epoch but the first. At
  # lr = 0.1 the linear scalarisation run selects its first epoch, not its last.
  bench = bench._replace(protocol=dataclasses.replace(bench.protocol, min_delta=10.0, lr=0.1))
  data = bench.load_data()
  (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = data
  job = converged.Job("tiny", f"{method}_seed{seed}", method, (), seed, "core")
  result = converged.train_run(bench, job, data, log=lambda s: None)
  history = result["history"]
  assert len({h["lr"] for h in history}) > 1                 # the lr was halved on the way
  step, init, _ = converged.make_step(bench, job)
  params = bench.init_params(seed)
  state = init(params)
  bs, per_epoch = bench.protocol.batch_size, []
  mae_of = lambda p, x, y: np.abs(np.asarray((x @ p["shared"]) @ p["heads"]) - y).mean(0)
  for e, h in enumerate(history):
    order = np.random.default_rng([seed, e]).permutation(len(x_tr))
    for b in range(len(x_tr) // bs):
      idx = np.sort(order[b * bs:(b + 1) * bs])
      params, state, _ = step(params, state, x_tr[idx], y_tr[idx],
                              jnp.asarray(h["lr"] / bench.protocol.lr, jnp.float32))
    per_epoch.append(params)
    mae = mae_of(params, x_va, y_va)
    np.testing.assert_allclose(h["val_metrics"], mae, rtol=1e-4)
    score = np.log(mae[1]) if method == "stl_1" else np.mean(np.log(mae))
    assert h["score"] == pytest.approx(score, rel=1e-4, abs=1e-6)
  best = result["best_epoch"]
  assert best == int(np.argmin([h["score"] for h in history]))
  test_mae = mae_of(per_epoch[best], x_te, y_te)
  np.testing.assert_allclose(result["test_metrics"], test_mae, rtol=1e-4)
  if method == "linear_scalarization":       # the last epoch's give other test metrics
    assert best < len(history) - 1
    assert np.max(np.abs(mae_of(params, x_te, y_te) - test_mae)) > 1e-6
  if method == "stl_1":
    # STL_1 moves the shared parameters along task 1's loss alone (the heads, as every
    # method's, along the sum of the losses: head 0 does not act on task 1). Three Adam
    # steps, since its first step is lr·sign(g) whatever the gradient's size.
    losses = lambda p, b: bench.head_losses(p, bench.encode(p, x_tr[b], y_tr[b]), x_tr[b],
                                            y_tr[b])
    _check_stl_1_steps(lambda p, s, b: step(p, s, x_tr[b], y_tr[b], jnp.asarray(1.0))[:2],
                       init, losses, bench.init_params(seed), bench.protocol.lr, bs)


def test_converged_run_resumes_from_its_checkpoint(tmp_path):
  from benchmarks import converged
  bench = _converged_bench()
  job = converged.Job("tiny", "linear_scalarization_seed0", "linear_scalarization", (), 0, "x")
  data = bench.load_data()
  whole = converged.train_run(bench, job, data, log=lambda s: None)
  ckpt = str(tmp_path / "run.ckpt")
  old, new = {"commit": "a"}, {"commit": "b"}
  assert converged.train_run(bench, job, data, ckpt, log=lambda s: None, stop_after=2,
                             code=old) is None
  resumed = converged.train_run(bench, job, data, ckpt, log=lambda s: None, code=new)
  assert resumed["resumed_from_epoch"] == 2 and whole["resumed_from_epoch"] is None
  # Every version of the code that trained the run, with the epoch it took over.
  assert resumed["code_history"] == [{"code": old, "from_epoch": 0},
                                     {"code": new, "from_epoch": 2}]
  assert [h["score"] for h in resumed["history"]] == [h["score"] for h in whole["history"]]
  assert resumed["test_metrics"] == whole["test_metrics"]
  assert whole["epochs_run"] == len(whole["history"]) and whole["mode"] == "representation"
  assert whole["best_val_score"] == pytest.approx(min(h["score"] for h in whole["history"]),
                                                 rel=1e-5)


def test_converged_summary_with_partial_coverage(tmp_path):
  from benchmarks import converged, converged_report
  bench = _converged_bench()._replace(higher_is_better=(True, True))
  bench = bench._replace(protocol=_protocol())

  def run(method, seed, metrics, config=None, score=0.5, converged_=True, wall=3600.0):
    return {"method": method, "config": config or {}, "seed": seed, "test_metrics": metrics,
            "converged": converged_, "stop_reason": "plateau" if converged_ else "cap",
            "epochs_run": 12, "best_epoch": 7, "best_val_score": score, "wall_s": wall,
            "history": [{"epoch": e, "lr": 1e-3, "score": score, "val_metrics": metrics,
                         "seconds": seconds, **({"cpu_seconds": 100.0} if e == 3 else {})}
                        for e, seconds in enumerate([300.0, 400.0, 9000.0, 500.0])]}

  runs = {"stl_0_seed0": run("stl_0", 0, [0.8, 0.0]), "stl_0_seed1": run("stl_0", 1, [0.9, 0.0]),
          "stl_1_seed0": run("stl_1", 0, [0.0, 0.5]),
          "linear_scalarization_seed0": run("linear_scalarization", 0, [0.85, 0.45]),
          "linear_scalarization_seed1": run("linear_scalarization", 1, [0.85, 0.55],
                                            converged_=False),
          "conicgrad[c=0.25]_seed0": run("conicgrad", 0, [0.9, 0.5], {"c": 0.25}, score=0.7),
          "conicgrad[c=0.5]_seed0": run("conicgrad", 0, [0.1, 0.1], {"c": 0.5}, score=0.6)}
  planned = converged.ordered({"tiny": converged.plan(
      "tiny", 2, ["linear_scalarization", "conicgrad", "krum"], runs.get, True)})
  s = converged_report.summarise(bench, runs, planned)
  assert s["partial"] and s["run_counts"]["done"] == 7 and s["run_counts"]["hit_cap"] == 1
  # Worker wall time as measured; CPU time per epoch where recorded (100 s), else the run's
  # median epoch time, 450 s (the 9,000 s epoch is a pause): 3·450 + 100 s per run, 7 runs.
  assert s["worker_wall_hours"] == pytest.approx(7.0)
  assert s["cpu_hours"] == pytest.approx(7 * 1450.0 / 3600.0)
  assert s["stl"] == pytest.approx([0.85, 0.5]) and s["stl_seeds"] == [[0, 1], [0]]
  ls = s["methods"]["linear_scalarization"]
  # per seed: mean(−(0.85−0.85)/0.85, −(0.45−0.5)/0.5) = 5, and mean(0, −10) = −5
  assert ls["delta_m_per_seed"] == pytest.approx([5.0, -5.0])
  assert ls["delta_m_pct"] == pytest.approx(0.0, abs=1e-9)
  assert ls["n_seeds"] == 2 and ls["converged"] == 1
  cg_row = s["methods"]["conicgrad"]
  assert cg_row["config"] == {"c": 0.25} and cg_row["provisional"] and cg_row["n_seeds"] == 1
  assert s["tuning"]["conicgrad"]["chosen"] == 0.25 and not s["tuning"]["conicgrad"]["complete"]
  assert "converged_rule" in s["protocol"] and s["device"] == "CPU (2 cores)"
  assert s["runs"]["stl_0_seed0"]["val_curve"][0]["lr"] == 1e-3
  assert cg_row["sem"] is None and cg_row["delta_m_sem"] is None   # one seed: unknown
  assert ls["sem"] == pytest.approx([0.0, 0.05])
  table = converged_report.markdown(bench, s)
  assert table.startswith("**Partial results**")
  assert "| conicgrad (c=0.25, provisional) | 1 of 3 |" in table
  assert "| linear_scalarization | 2 of 3 |" in table
  # epochs run (best epoch counted from 1) per seed; the STL row: the range over its runs.
  assert "| 12 (8), 12 (8) |" in table and "12–12 over 3 runs" in table
  converged_report.plot_delta(bench, s, str(tmp_path / "delta.png"))
  assert s["run_counts"]["stops"] == {"plateau": 6, "cap": 1}
  assert s["run_counts"]["lr_floor_gain_in_last_window"] is None
  assert "| 1 / 1 |" in table          # linear scalarisation's stops: plateau / cap (no floor)
  assert s["seeds"] == [0, 1] and s["library"] == store_m.library_fingerprint()

  # A run stopped at the learning-rate floor, its best score still rising in the last
  # 20 % of its epochs (4 of 16: from 0.70 to 0.71).
  floor = run("imtl_g", 0, [0.8, 0.5])
  floor.update(stop_reason="lr floor", history=[
      {"epoch": e, "lr": 1e-3, "score": 0.5 + 0.2 * min(e, 11) / 11 + (0.01 if e == 13 else 0.0),
       "val_metrics": [0.8, 0.5], "seconds": 1.0} for e in range(16)])
  with_floor = bench._replace(protocol=_protocol(lr_halvings=3, min_delta=0.005))
  s = converged_report.summarise(with_floor, {**runs, "imtl_g_seed0": floor}, planned)
  gains = s["run_counts"]["lr_floor_gain_in_last_window"]
  assert gains["runs"] == 1 and gains["median"] == pytest.approx(0.01)
  assert gains["above_min_delta"] == 1
  table = converged_report.markdown(with_floor, s)
  assert "| 0 / 1 / 0 |" in table and "1 at the learning-rate floor" in table

  # A run with a non-finite test metric is left out of the rows and listed.
  runs["mgda_seed0"] = run("mgda", 0, [None, 0.5])
  s = converged_report.summarise(bench, runs, planned)
  assert "mgda" not in s["methods"] and s["run_counts"]["no_finite_test_metrics"] == 1
  assert "Runs without a finite test metric (left out): mgda_seed0." in (
      converged_report.markdown(bench, s))


def test_converged_summary_time_ratios_ranks_and_the_unselected_seeds_delta_m_by_hand():
  """Per method: the median of its runs' step times over linear scalarisation's, the mean
  rank over the task metrics (task 0 higher, task 1 lower is better), and for a tuned
  method the Δm% of seeds 1 and 2 alone (seed 0 won the grid on validation)."""
  from benchmarks import converged_report
  bench = _converged_bench()._replace(higher_is_better=(True, False), protocol=_protocol())

  def run(method, seed, metrics, step_s, config=None, score=0.5):
    return {"method": method, "config": config or {}, "seed": seed, "test_metrics": metrics,
            "converged": True, "stop_reason": "plateau", "epochs_run": 12, "best_epoch": 7,
            "best_val_score": score, "wall_s": 60.0, "time_per_step_in_run_s": step_s,
            "history": []}

  runs = {"stl_0_seed0": run("stl_0", 0, [0.8, 0.0], 0.1),
          "stl_1_seed0": run("stl_1", 0, [0.0, 0.5], 0.1),
          "mgda_seed0": run("mgda", 0, [0.72, 0.4], 0.5)}
  for seed, step_s in enumerate([0.1, 0.6, 0.2]):                 # median 0.2, mean 0.3
    runs[f"linear_scalarization_seed{seed}"] = run("linear_scalarization", seed, [0.8, 0.5],
                                                   step_s)
  # ConicGrad's grid on seed 0: c = 0.5 has the best validation score; seeds 1, 2 use it.
  for c, score in ((0.25, 0.6), (0.75, 0.5)):
    runs[f"conicgrad[c={c:g}]_seed0"] = run("conicgrad", 0, [0.1, 0.9], 9.0, {"c": c}, score)
  cg_metrics = [[0.88, 0.45], [0.84, 0.55], [0.80, 0.47]]
  for seed, (metrics, step_s) in enumerate(zip(cg_metrics, [0.3, 0.8, 0.4])):  # median 0.4
    runs[f"conicgrad[c=0.5]_seed{seed}"] = run("conicgrad", seed, metrics, step_s, {"c": 0.5},
                                               0.7 if seed == 0 else 0.5)
  s = converged_report.summarise(bench, runs, [])
  rows = s["methods"]
  assert s["tuning"]["conicgrad"]["chosen"] == 0.5 and rows["conicgrad"]["seeds"] == [0, 1, 2]
  assert rows["linear_scalarization"]["time_per_step_in_runs_s"] == pytest.approx(0.2)
  assert rows["conicgrad"]["time_per_step_in_runs_s"] == pytest.approx(0.4)
  assert rows["linear_scalarization"]["time_ratio_to_ls"] == pytest.approx(1.0)
  assert rows["conicgrad"]["time_ratio_to_ls"] == pytest.approx(0.4 / 0.2)
  assert rows["mgda"]["time_ratio_to_ls"] == pytest.approx(0.5 / 0.2)
  # Means: conicgrad (0.84, 0.49), linear scalarisation (0.8, 0.5), mgda (0.72, 0.4).
  # Task 0 (higher is better) ranks them 1, 2, 3; task 1 (lower is better) 2, 3, 1.
  assert rows["conicgrad"]["mean_rank"] == pytest.approx((1 + 2) / 2)
  assert rows["linear_scalarization"]["mean_rank"] == pytest.approx((2 + 3) / 2)
  assert rows["mgda"]["mean_rank"] == pytest.approx((3 + 1) / 2)
  # Δm% against STL (0.8, 0.5): 100·mean(−(M₀ − 0.8)/0.8, (M₁ − 0.5)/0.5) per seed:
  # −10, 2.5 and −3 for ConicGrad's seeds 0, 1, 2.
  per_seed = [100 * np.mean([-(m0 - 0.8) / 0.8, (m1 - 0.5) / 0.5]) for m0, m1 in cg_metrics]
  np.testing.assert_allclose(per_seed, [-10.0, 2.5, -3.0], atol=1e-9)
  assert rows["conicgrad"]["delta_m_pct"] == pytest.approx(np.mean(per_seed))
  assert rows["conicgrad"]["delta_m_pct_unselected"] == pytest.approx((2.5 - 3.0) / 2)
  assert rows["linear_scalarization"]["delta_m_pct_unselected"] is None     # not tuned
  assert "Δm% over seeds 1–2 alone: -0.25" in converged_report.markdown(bench, s)


@pytest.mark.slow
def test_perf_quick_parts_write_their_tables(tmp_path):
  """`python -m benchmarks perf --quick` for the diagnostics and torchjd parts (the
  latter only when the perf extra is installed): JSON rows and markdown tables."""
  from benchmarks import perf
  rows = perf.main(["--quick", "--parts", "diagnostics,torchjd", "--out", str(tmp_path)])
  text = (tmp_path / "perf_quick.md").read_text()
  diagnostics = [r for r in rows if r["part"] == "diagnostics"]
  assert [r["candidate"] for r in diagnostics] == ["conicgrad", "with_diagnostics(conicgrad)"]
  assert diagnostics[0]["ratio_to_unwrapped"] == 1.0 and "`with_diagnostics`" in text
  if any(r["part"] == "torchjd" for r in rows):
    nash = [r for r in rows if r.get("aggregator") == "NashMTL"]
    assert all(r["fixed_point_spread_ours"] < 1e-3 for r in nash)
    assert "Nash-MTL's fixed point" in text and "torch's CPU BLAS" in text


@pytest.mark.slow   # five compilations at K = 4
def test_perf_compile_stages_remove_the_stages_they_name(tmp_path):
  """The stand-ins of `perf --parts compile_stages` replace the crossover and the
  interior-point phase: each removal leaves fewer fused kernels, and the solver
  module is restored afterwards."""
  from benchmarks import perf
  from conicgrad_jax.solvers import cone
  rows = perf.main(["--quick", "--parts", "compile_stages", "--out", str(tmp_path)])
  kernels = [r["fused_kernels"] for r in rows]
  assert kernels[0] > kernels[1] > kernels[2] > kernels[3] > kernels[4]
  assert rows[0]["ratio_to_whole"] == 1.0
  assert cone._crossover.__module__ == cone._primal_barrier.__module__ == cone.__name__
  assert "Where ConicGrad's compile time goes" in (tmp_path / "perf_quick.md").read_text()


@pytest.mark.parametrize("method", ["pcgrad", "rlw", "graddrop", "gradvac"])
def test_short_protocol_methods_draw_their_random_numbers_from_the_run_seed(method):
  keys = [supervised.make_method(method, 3, None, seed).init(None).key for seed in (0, 1, 2)]
  assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 3
  assert supervised.make_method("mgda", 3, None, 2) is not None


def test_converged_methods_draw_their_random_numbers_from_the_run_seed():
  """PCGrad's task order, RLW's weights, GradDrop's and GradVac's draws follow the
  run's seed; a method without randomness is built as before."""
  from benchmarks import converged
  job = lambda method, seed: converged.Job("tiny", f"{method}_seed{seed}", method, (), seed, "core")
  for method in ("pcgrad", "rlw", "graddrop", "gradvac"):
    keys = [converged.build_method(job(method, s), 3)[0].init({"w": np.zeros(4, np.float32)}).key
            for s in (0, 1, 2)]
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 3, method   # raw uint32 keys
  assert converged.build_method(job("mgda", 2), 3)[1] is False


def test_a_full_report_counts_runs_against_the_whole_plan_when_some_methods_train(monkeypatch):
  """``--methods`` picks what a process trains; the report it writes holds every method's
  runs, so it counts them against the suite's plan (the quick form's plan is the subset)."""
  from benchmarks import converged, converged_report
  seen = []
  monkeypatch.setattr(converged, "suite_plan",
                      lambda contexts, methods, quick: seen.append(methods) or [])
  monkeypatch.setattr(converged_report, "write", lambda *args, **kwargs: None)
  converged.summarise_all({}, "out", methods=["mgda"], quick=False)
  converged.summarise_all({}, "out", methods=["mgda"], quick=True)
  assert seen == [None, ["mgda"]]


def test_timing_rounds_are_fresh_permutations_so_predecessors_vary():
  from benchmarks import timing
  names = [f"m{i}" for i in range(39)]
  orders = timing.round_orders(names, 7, seed=0)
  assert all(sorted(o) == sorted(names) for o in orders)
  assert orders == timing.round_orders(names, 7, seed=0)           # reproducible
  predecessors = {n: {o[o.index(n) - 1] for o in orders if o.index(n) > 0} for n in names}
  # A rotated order gave every candidate one predecessor in almost every round.
  assert np.median([len(p) for p in predecessors.values()]) >= 5
  calls = {n: (lambda: 0.0) for n in names[:3]}
  times = timing.interleaved_times(calls, 4, warmup=1)
  assert set(times) == set(names[:3]) and all(t.shape == (4,) for t in times.values())


def test_interleaved_times_follow_the_round_orders_after_the_warm_up(monkeypatch):
  """Calls are recorded, and a fake clock makes each candidate take a known time: the
  untimed warm-up rounds come first, then every round in round_orders' order, and the
  summary is the median of what was measured."""
  from benchmarks import timing
  clock, calls = [0.0], []
  durations = {"a": [1.0, 9.0, 2.0, 3.0, 4.0], "b": [0.5] * 5, "c": [7.0, 1.0, 1.0, 1.0, 1.0]}

  def candidate(name):
    def call():
      calls.append(name)
      timed = len([c for c in calls if c == name]) - 3        # after 2 warm-up calls
      clock[0] += durations[name][timed] if timed >= 0 else 100.0
    return call

  monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
  times = timing.interleaved_times({n: candidate(n) for n in "abc"}, 5, warmup=2, seed=3)
  assert calls[:6] == list("abcabc")
  assert calls[6:] == [n for order in timing.round_orders(list("abc"), 5, seed=3) for n in order]
  for n in "abc":
    np.testing.assert_allclose(times[n], durations[n])
  assert timing.summary(times["a"])["median_s"] == 3.0
  assert timing.summary(times["c"])["median_s"] == 1.0


def test_scaling_model_sizes_are_the_ones_the_docs_name():
  from benchmarks import models
  shared = {name: models.count(models.init_params(40, width))
            for name, width in models.WIDTHS.items()}
  assert shared == {"5.2M": 5_200_772, "10M": 9_996_965, "20M": 20_010_251,
                    "34.4M": 34_394_983}


def test_tuning_picks_the_best_validation_score_and_ties_go_to_the_default():
  from benchmarks import converged
  spec = ("c", (0.2, 0.4, 0.6))                   # the default: the middle value
  jobs = converged.grid_jobs("tiny", "cagrad", "grids", spec)

  def chosen(scores, higher_is_better=True):
    runs = {j.key: {"best_val_score": scores[j.kwargs[0][1]]} for j in jobs}
    return converged.tuning("tiny", "cagrad", runs.get, higher_is_better, spec)["chosen"]

  assert chosen({0.2: 0.5, 0.4: 0.5, 0.6: 0.5}) == 0.4
  assert chosen({0.2: 0.6, 0.4: 0.5, 0.6: 0.6}) == 0.2        # a tie without the default
  assert chosen({0.2: 0.5, 0.4: 0.5, 0.6: 0.7}) == 0.6
  assert chosen({0.2: 0.5, 0.4: 0.5, 0.6: 0.7}, higher_is_better=False) == 0.4
  assert chosen({0.2: 0.4, 0.4: 0.5, 0.6: 0.7}, higher_is_better=False) == 0.2


def test_qm9_standardises_with_the_training_split_and_reports_mae_in_the_data_units(monkeypatch):
  """Feature and target statistics come from the training split alone; the converged
  benchmark's MAE multiplies the standardised error by the training targets' spread; an
  energy in hartree is 27,211.386 meV (CODATA: 1 Eh = 27.211386 eV)."""
  from benchmarks import qm9
  rng = np.random.default_rng(0)
  x = rng.standard_normal((60, 34)) * 3.0 + 1.0
  y = rng.standard_normal((60, 11)) * np.arange(1, 12) + 5.0
  monkeypatch.setattr(qm9, "load_features", lambda max_molecules=None: (x, y))
  (train, val, test), ysd = qm9.build_data((40, 10, 10), seed=3)
  order = np.random.default_rng(3).permutation(60)
  np.testing.assert_allclose(ysd, y[order[:40]].std(0), rtol=1e-12)
  np.testing.assert_allclose(train[0].mean(0), 0.0, atol=1e-5)
  np.testing.assert_allclose(train[0].std(0), 1.0, rtol=1e-4)
  np.testing.assert_allclose(train[1], (y[order[:40]] - y[order[:40]].mean(0)) / ysd, rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_allclose(val[1], (y[order[40:50]] - y[order[:40]].mean(0)) / ysd,
                             rtol=1e-5, atol=1e-5)
  bench = qm9.converged_bench(quick=True)
  bench.load_data()              # its training split (2,048) holds all 60 molecules here
  params = qm9.init_params(0)
  err = np.asarray(qm9.predict(params, test[0])) - test[1]
  _, mae_sums = bench.eval_sums(params, test[0], test[1])
  np.testing.assert_allclose(np.asarray(mae_sums), np.abs(err).sum(0) * y.std(0), rtol=1e-4)
  assert qm9.HARTREE_MEV == pytest.approx(27_211.386, rel=1e-7)
  assert all((f == qm9.HARTREE_MEV) == (u == "meV")
             for f, u in zip(qm9.TO_PUBLISHED, qm9.PUBLISHED_UNITS))


def test_converged_cost_summary_takes_medians_per_set_up_and_machine_throughput():
  """Set-up A (one process) and B (two processes at once): the median over every process
  of every repeat of that set-up; throughput 1/t for A, 2/t for B (two steps at a time)."""
  from benchmarks import converged_cost
  labels = [c[0] for c in converged_cost.CANDIDATES]

  def process(seconds):       # the same step time for every candidate, times its number
    return {"qm9": {label: {"median_s": seconds * (n + 1)} for n, label in enumerate(labels)}}

  runs = []
  for r, (a, b) in enumerate([(0.010, (0.030, 0.016)), (0.011, (0.017, 0.018)),
                              (0.030, (0.019, 0.050))]):
    runs.append({"repeat": r, "setup": "A: one process, 2 cores", "processes": [process(a)]})
    runs.append({"repeat": r, "setup": "B: two processes, 1 core each",
                 "processes": [process(t) for t in b]})
  s = converged_cost.summarise(runs, ["qm9"])
  assert list(s) == ["qm9"] and list(s["qm9"]) == labels
  for n, label in enumerate(labels):
    row, f = s["qm9"][label], n + 1
    # A: median of (10, 11, 30) ms = 11 ms; B: median of (30, 16, 17, 18, 19, 50) ms = 18.5 ms.
    assert row["A_median_s"] == pytest.approx(0.011 * f)
    assert row["B_median_s"] == pytest.approx(0.0185 * f)
    assert row["A_steps_per_s"] == pytest.approx(1 / (0.011 * f))
    assert row["B_steps_per_s"] == pytest.approx(2 / (0.0185 * f))
    assert row["B_over_A_throughput"] == pytest.approx(2 * 0.011 / 0.0185)
    np.testing.assert_allclose(row["A_all"], np.array([0.010, 0.011, 0.030]) * f)
    np.testing.assert_allclose(row["B_all"], np.array([0.030, 0.016, 0.017, 0.018, 0.019,
                                                       0.050]) * f)
  assert "| qm9 | ls (one backward) | 11.0 | 18.5 | 1.19 |" in converged_cost.markdown(s)
