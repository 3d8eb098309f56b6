"""The benchmarks' bookkeeping: Δm%, mean rank, resumable run storage, overlay data, QM9 features."""

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


def test_run_store_resumes(tmp_path):
  runs = store_m.RunStore(str(tmp_path), "bench")
  calls = []
  first = runs.run("conicgrad_seed0", lambda: calls.append(1) or {"v": 1})
  again = store_m.RunStore(str(tmp_path), "bench").run("conicgrad_seed0",
                                                        lambda: calls.append(2) or {"v": 2})
  assert first == again == {"v": 1} and calls == [1]


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
  assert set(stored) == {"linear_scalarization", "famo"}
