"""The multi-task RL benchmark's pieces: task family, network split, normalisation, Δm%, resuming."""

import json
import types

import jax
import numpy as np
import pytest

pytest.importorskip("gymnax")

from benchmarks import mtrl            # noqa: E402
from benchmarks import store as store_m  # noqa: E402


def test_task_family_has_the_four_variants():
  tasks = mtrl.task_family()
  assert [t.name for t in tasks] == ["CartPole-v1", "Acrobot-v1", "CartPole-long-weak",
                                     "Acrobot-heavy"]
  assert [t.num_actions for t in tasks] == [2, 3, 2, 3]
  base, long_ = tasks[0].params, tasks[2].params
  assert (long_.length, long_.force_mag) == (1.0, 5.0)
  assert long_.polemass_length == pytest.approx(long_.masspole * long_.length)
  assert (base.length, base.force_mag) == (0.5, 10.0)
  assert (tasks[1].params.link_mass_2, tasks[3].params.link_mass_2) == (1.0, 2.0)


def test_trunk_is_shared_and_each_task_has_its_heads():
  tasks = mtrl.task_family()
  params = mtrl.init_params(jax.random.PRNGKey(0), tasks, 4, 8)
  flags = [mtrl.is_shared(p, l) for p, l in jax.tree_util.tree_flatten_with_path(params)[0]]
  assert sum(flags) == 4                                   # two dense layers' w and b
  x = mtrl.features(np.zeros((5, 4), np.float32), 2, 4)  # CartPole obs, task 2 of 4
  assert x.shape == (5, mtrl.OBS_DIM + 4) and np.all(np.asarray(x[:, mtrl.OBS_DIM + 2]) == 1)
  logits, value = mtrl.forward(params, 1, x)
  assert logits.shape == (5, 3) and value.shape == (5,)


def test_normalisation_maps_random_to_zero_and_stl_to_one():
  n = mtrl.normalise([[-500.0, 30.0], [-100.0, 130.0]], [-500.0, 30.0], [-100.0, 230.0])
  np.testing.assert_allclose(n, [[0.0, 0.0], [1.0, 0.5]])


def _result(final, t=2.0):
  return {"final_return": final, "wall_time_per_run_s": t}


def test_delta_m_and_ranks_on_normalised_returns_by_hand():
  random = [0.0, -500.0]
  results = {("stl_0", 0): _result([100.0]), ("stl_0", 1): _result([300.0]),   # STL mean 200
             ("stl_1", 0): _result([-100.0]), ("stl_1", 1): _result([-100.0]),
             ("a", 0): _result([200.0, -300.0]), ("a", 1): _result([100.0, -300.0]),
             ("b", 0): _result([0.0, -100.0]), ("b", 1): _result([0.0, -100.0])}
  s = mtrl.summarise(["c", "d"], results, ["a", "b"], [0, 1], random)
  a, b = s["methods"]["a"], s["methods"]["b"]
  np.testing.assert_allclose(a["mean"], [0.75, 0.5])       # (150/200, 200/400)
  np.testing.assert_allclose(b["mean"], [0.0, 1.0])
  # Δm% = mean_k (1 − n_k)·100 per seed, then averaged: a: (0+50)/2, (50+50)/2 → 37.5
  assert a["delta_m_pct"] == pytest.approx(37.5)
  assert b["delta_m_pct"] == pytest.approx(50.0)
  assert a["mean_rank"] == pytest.approx(1.5) and b["mean_rank"] == pytest.approx(1.5)
  assert s["stl_raw_return"] == pytest.approx([200.0, -100.0])
  assert a["wall_time_per_run_s"] == pytest.approx(2.0)
  table = mtrl.markdown_table(["c", "d"], s)
  assert table.count("\n") == 5 and "| a |" in table


def test_tasks_the_baseline_did_not_learn_are_reported_raw_and_left_out():
  random = [0.0, -500.0]
  results = {("stl_0", 0): _result([200.0]), ("stl_1", 0): _result([-500.0]),
             ("a", 0): _result([100.0, -200.0]), ("b", 0): _result([200.0, -500.0])}
  s = mtrl.summarise(["c", "d"], results, ["a", "b"], [0], random)
  assert s["normalised_tasks"] == ["c"]
  assert s["methods"]["a"]["delta_m_pct"] == pytest.approx(50.0)    # task c only
  assert s["methods"]["b"]["mean_rank"] == pytest.approx(1.0)
  assert s["methods"]["a"]["raw_return_mean"] == pytest.approx([100.0, -200.0])
  assert "-200.0" in mtrl.markdown_table(["c", "d"], s)
  np.testing.assert_array_equal(
      mtrl.learnt([10.0, -499.5, -480.0, -300.0], [0.0, -500.0, -500.0, -500.0]),
      [True, False, False, True])


def test_runs_resume_from_the_store(tmp_path, monkeypatch):
  calls = []

  def fake_train(tasks, ids, k, method, seeds, cfg):
    calls.append((method, tuple(seeds)))
    return [{"seed": s, "final_return": [1.0] * len(tasks)} for s in seeds]

  monkeypatch.setattr(mtrl, "train", fake_train)
  tasks = mtrl.task_family()[:2]
  runs = store_m.RunStore(str(tmp_path), "mtrl")
  first = mtrl.run_all(tasks, ["conicgrad"], [0, 1], mtrl.Config(), runs)
  assert calls == [("stl", (0, 1)), ("stl", (0, 1)), ("conicgrad", (0, 1))]
  (tmp_path / "mtrl_runs" / "conicgrad_seed1.json").unlink()      # one seed lost
  again = mtrl.run_all(tasks, ["conicgrad"], [0, 1], mtrl.Config(), store_m.RunStore(
      str(tmp_path), "mtrl"))
  # The seeds' batch trains again (rounding depends on it); the complete ones do not.
  assert calls[3:] == [("conicgrad", (0, 1))]
  assert again[("stl_0", 0)] == first[("stl_0", 0)]
  assert again[("conicgrad", 1)]["method"] == "conicgrad"
  assert again[("conicgrad", 1)]["seed_batch"] == [0, 1]
  # Stored seeds from different batches (one retrained alone) train again together.
  path = tmp_path / "mtrl_runs" / "conicgrad_seed1.json"
  path.write_text(json.dumps({**again[("conicgrad", 1)], "seed_batch": [1]}))
  mtrl.run_all(tasks, ["conicgrad"], [0, 1], mtrl.Config(), store_m.RunStore(str(tmp_path), "mtrl"))
  assert calls[4:] == [("conicgrad", (0, 1))]


@pytest.mark.slow
def test_quick_benchmark_writes_its_outputs(tmp_path):
  summary = mtrl.main(["--quick", "--out", str(tmp_path)])
  assert set(summary["methods"]) == set(mtrl.QUICK_METHODS)
  data = json.loads((tmp_path / "mtrl_quick.json").read_text())
  assert data["tasks"] == ["CartPole-v1", "CartPole-long-weak"]
  assert (tmp_path / "mtrl_quick.png").exists() and (tmp_path / "mtrl_quick.md").exists()
  # A random CartPole policy lasts about 22 steps.
  assert 15.0 < data["random_return"][0] < 30.0
  assert np.all(np.isfinite([r["delta_m_pct"] for r in summary["methods"].values()]))


def test_solved_score_uses_every_task():
  random, solved = [0.0, -500.0], [400.0, -100.0]
  results = {("stl_0", 0): _result([200.0]), ("stl_1", 0): _result([-500.0]),
             ("a", 0): _result([100.0, -300.0]), ("b", 0): _result([200.0, -500.0])}
  s = mtrl.summarise(["c", "d"], results, ["a", "b"], [0], random, solved=solved)
  assert s["methods"]["a"]["solved_score"] == pytest.approx((0.25 + 0.5) / 2)
  assert s["methods"]["b"]["solved_score"] == pytest.approx(0.25)
  assert s["methods"]["a"]["solved_score_rank"] == 1
  assert s["stl_solved_score"] == pytest.approx(0.25)
  # One seed: the means alone (a standard error needs two).
  assert s["methods"]["b"]["solved_score_sem"] is None
  assert "| b | 200.0 | -500.0 | 0.25 | 2 |" in mtrl.raw_table(["c", "d"], s)


def test_generalized_advantages_by_hand():
  """γ = 0.9, λ = 0.8 over three steps; env 0 ends an episode at t = 1, env 1 never does.

  Env 0: δ = (1 + 0.9·0.4 − 0.5, 1 − 0.4, 1 + 0.9·0.2 − 0.3) = (0.86, 0.6, 0.88) and
  A₂ = 0.88, A₁ = 0.6 (the episode end cuts the sum), A₀ = 0.86 + 0.72·0.6 = 1.292.
  Env 1 (reward 1 at the end, values 0): A = (0.72², 0.72, 1).
  """
  rewards = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]], np.float32)
  values = np.array([[0.5, 0.0], [0.4, 0.0], [0.3, 0.0]], np.float32)
  dones = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], np.float32)
  adv, target = mtrl.generalized_advantages(rewards, values, dones, np.array([0.2, 0.0], np.float32),
                                            0.9, 0.8)
  np.testing.assert_allclose(np.asarray(adv), [[1.292, 0.5184], [0.6, 0.72], [0.88, 1.0]],
                             rtol=1e-6)
  np.testing.assert_allclose(np.asarray(target), np.asarray(adv) + values, rtol=1e-6)


def test_final_return_averages_the_episodes_that_end_in_the_last_tenth_of_training(monkeypatch):
  """With 20 iterations the last tenth is the last 2: the final return is the summed return
  of the episodes ending there over their number (NaN if none ends there); the curve is each
  iteration's mean episode return (NaN without an episode)."""
  # Per seed, iteration and task: the summed returns and the number of episodes that ended.
  rets, counts = np.zeros((2, 20, 2)), np.zeros((2, 20, 2))
  rets[:, :, 0], counts[:, :, 0] = np.arange(20.0), 1.0   # task 0: one episode of return t
  rets[0, 17, 1], counts[0, 17, 1] = 10.0, 2.0            # seed 0, task 1: none after t = 17
  rets[1, 18, 1], counts[1, 18, 1] = 2.0, 1.0             # seed 1, task 1: 1 of 2, 3 of 30
  rets[1, 19, 1], counts[1, 19, 1] = 30.0, 3.0
  calls = []

  def fake_trainer(tasks, task_ids, family_size, method, cfg):
    def chunk(carry):
      n = len(calls)
      calls.append(n)
      part = slice(10 * n, 10 * (n + 1))                # iterations // chunks per call
      return carry, (rets[:, part], counts[:, part], np.zeros((2, 10, 2)))
    return (lambda seed: np.zeros(1, np.float32)), chunk

  monkeypatch.setattr(mtrl, "make_trainer", fake_trainer)
  tasks = [types.SimpleNamespace(name="c"), types.SimpleNamespace(name="d")]
  out = mtrl.train(tasks, [0, 1], 2, "linear_scalarization", [0, 1],
                   mtrl.Config(iterations=20, chunks=2))
  assert len(calls) == 2 and [r["seed"] for r in out] == [0, 1]
  # Task 0: (18 + 19)/2 (the last iteration alone: 19, the last three: 18). Task 1: seed 0's
  # last episodes end at t = 17, before the tail; seed 1's, (2 + 30)/(1 + 3) = 8 (the mean of
  # the two iterations' means would be 6).
  np.testing.assert_allclose(out[0]["final_return"], [18.5, np.nan])
  np.testing.assert_allclose(out[1]["final_return"], [18.5, 8.0])
  np.testing.assert_allclose(np.array(out[1]["curve"])[:, 0], np.arange(20.0))
  expected = np.full(20, np.nan)
  expected[18], expected[19] = 2.0, 10.0
  np.testing.assert_allclose(np.array(out[1]["curve"], float)[:, 1], expected)


def test_learning_curve_bands_are_standard_errors_over_the_seeds_with_a_value():
  curves = np.array([[1.0, np.nan, 5.0], [3.0, 2.0, 5.0], [5.0, 4.0, 5.0]])
  mean, se = mtrl._mean_and_standard_error(curves)
  np.testing.assert_allclose(mean, [3.0, 3.0, 5.0])
  # ddof = 1: s.d. 2 over 3 seeds, √2 over the 2 seeds with a value, 0.
  np.testing.assert_allclose(se, [2.0 / np.sqrt(3.0), np.sqrt(2.0) / np.sqrt(2.0), 0.0])
  assert np.isnan(mtrl._mean_and_standard_error(np.array([[1.0], [np.nan]]))[1][0])
