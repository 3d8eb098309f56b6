"""The dashboard draws a logged history; the conflict-dashboard example runs end to end (small)."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax import dashboard

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

pytest.importorskip("matplotlib")


def _history(t=6, k=3):
  rng = np.random.default_rng(0)
  diagnose = jax.jit(cg.conflict_diagnostics)
  out = []
  for s in range(t):
    J = rng.standard_normal((k, 5))
    out.append(diagnose(jnp.asarray(J @ J.T, jnp.float32), jnp.full(k, 1 / k),
                                       jnp.linspace(1.0, 2.0, k) / (s + 1)))
  return out


def test_stack_history_and_png(tmp_path):
  history = _history()
  stacked = dashboard.stack_history(history)
  assert stacked.cosines.shape == (6, 3, 3) and stacked.weights.shape == (6, 3)
  again = dashboard.stack_history(stacked)                 # an already stacked history
  np.testing.assert_array_equal(again.losses, stacked.losses)
  path = tmp_path / "d.png"
  fig = dashboard.plot_dashboard(history, str(path), task_names=["a", "b", "c"], title="t")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
  assert len(fig.axes) >= 6
  with pytest.raises(ValueError, match="task_names"):
    dashboard.plot_dashboard(history, task_names=["a"])
  with pytest.raises(ValueError, match="empty"):
    dashboard.stack_history([])
  with pytest.raises(ValueError, match="losses"):
    dashboard.plot_dashboard(history, losses=np.ones((2, 3)))
  with pytest.raises(ValueError, match=r"`steps` has shape \(3,\); expected \(6,\)"):
    dashboard.plot_dashboard(history, steps=[0, 10, 20])


@pytest.mark.slow   # a fresh process
def test_drawing_leaves_the_users_matplotlib_backend_alone(tmp_path):
  import subprocess
  code = ("import matplotlib; matplotlib.use('ps')\n"
          "import jax.numpy as jnp, conicgrad_jax as cg\n"
          "from conicgrad_jax import dashboard\n"
          "d = cg.conflict_diagnostics(jnp.eye(2), jnp.full(2, 0.5), jnp.ones(2))\n"
          f"dashboard.plot_dashboard([d, d], {str(tmp_path / 'd.png')!r})\n"
          "print(matplotlib.get_backend())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split()[-1] == "ps", out.stdout + out.stderr
  assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_conflict_dashboard_example_runs_small(tmp_path):
  import conflict_dashboard
  out = tmp_path / "dash.png"
  history = conflict_dashboard.main(["--steps", "3", "--batch", "16", "--n-train", "64",
                                     "--out", str(out), "--quiet"])
  assert len(history) == 3 and out.stat().st_size > 20_000
  last = cg.diagnostics.as_dict(history[-1], conflict_dashboard.TASKS)
  assert all(np.isfinite(v) for v in last.values())
  assert -1.0 <= last["cos/left-right"] <= 1.0 and last["loss/left"] > 0


def test_running_mean_is_the_trailing_window_mean():
  y = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]])
  expected = np.array([[0.0, 1.0], [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
  np.testing.assert_allclose(dashboard.running_mean(y, 2), expected)
  np.testing.assert_array_equal(dashboard.running_mean(y, 1), y)


def test_running_mean_leaves_out_the_nan_of_skipped_steps():
  y = np.array([np.nan, 1.0, 3.0, np.nan, np.nan, 5.0])
  np.testing.assert_allclose(dashboard.running_mean(y, 2), [np.nan, 1.0, 2.0, 3.0, np.nan, 5.0])


def test_the_panels_draw_the_logged_values():
  history = _history()
  h = dashboard.stack_history(history)
  fig = dashboard.plot_dashboard(history, smooth=1)
  panel = {a.get_title(): a for a in fig.axes if a.get_title()}
  weights = panel["combination weights"].get_lines()
  for i in range(3):
    np.testing.assert_allclose(weights[i].get_ydata(), h.weights[:, i])
  angles = panel["update-to-task angles (> 90°: that task gets worse)"].get_lines()
  np.testing.assert_allclose(angles[0].get_ydata(),
                             np.degrees(np.arccos(np.clip(h.update_cosines[:, 0], -1, 1))))
  losses = panel["task losses"].get_lines()
  np.testing.assert_allclose(losses[2].get_ydata(), h.losses[:, 2])
  image = panel["pairwise task-gradient cosines (blue: aligned, red: conflicting)"].get_images()[0]
  np.testing.assert_allclose(np.asarray(image.get_array())[0], h.cosines[:, 0, 1])
  conflict = panel["conflicting pairs (per step) and cond(G)"].get_lines()[0]
  np.testing.assert_allclose(conflict.get_ydata(), h.conflict_fraction)
  # The two right axes (twinx: untitled axes sharing a panel's position) and the rest.
  np.testing.assert_allclose(angles[3].get_ydata(),
                             np.degrees(np.arccos(np.clip(h.update_cosine_to_mean, -1, 1))))
  norms_panel = panel["task-gradient norms; magnitude similarity (right axis)"]
  for i in range(3):
    np.testing.assert_allclose(norms_panel.get_lines()[i].get_ydata(), h.grad_norms[:, i])
  twins = {id(ax): ax for ax in fig.axes if not ax.get_title()}.values()
  right = {ax.get_ylabel(): ax for ax in twins}
  iu = np.triu_indices(3, 1)
  np.testing.assert_allclose(right["mean magnitude similarity"].get_lines()[0].get_ydata(),
                             h.magnitude_similarity[:, iu[0], iu[1]].mean(axis=1))
  np.testing.assert_allclose(right["cond(G)"].get_lines()[0].get_ydata(), h.condition_number)
  smoothed = {a.get_title(): a for a in dashboard.plot_dashboard(history, smooth=3).axes}
  conflict = smoothed["conflicting pairs (running mean of 3 steps) and cond(G)"].get_lines()[0]
  np.testing.assert_allclose(conflict.get_ydata(),
                             dashboard.running_mean(h.conflict_fraction, 3))


def _stacked(t, k=2):
  """A hand-made stacked history: weights (t, k) = step index + task index, the rest constant."""
  steps = np.arange(t, dtype=np.float64)
  return cg.diagnostics.ConflictDiagnostics(
      cosines=np.broadcast_to(np.eye(k), (t, k, k)), magnitude_similarity=np.ones((t, k, k)),
      conflict_fraction=np.zeros(t), grad_norms=np.ones((t, k)),
      weights=steps[:, None] + np.arange(k), update_norm=np.ones(t),
      update_cosines=np.ones((t, k)), update_cosine_to_mean=np.ones(t),
      condition_number=np.ones(t), losses=np.ones((t, k)))


def test_given_losses_are_drawn_even_with_the_nan_of_a_skipped_step():
  """`losses=` replaces the logged ones in the loss panel; a NaN step leaves the other steps
  drawn and, the finite losses being positive, the log scale."""
  history = _history()
  losses = np.array([[4.0, 2.0, 1.0]] * 6) / np.arange(1, 7)[:, None]
  losses[2, 1] = np.nan
  fig = dashboard.plot_dashboard(history, losses=losses, smooth=1)
  ax = {a.get_title(): a for a in fig.axes}["task losses"]
  lines = ax.get_lines()
  assert len(lines) == 3 and ax.get_yscale() == "log"
  for i in range(3):
    np.testing.assert_array_equal(lines[i].get_ydata(), losses[:, i])


def test_the_default_smoothing_window_is_a_fortieth_of_the_steps():
  """80 steps: a window of 2, i.e. a faint raw curve and the trailing mean of 2 steps per task."""
  fig = dashboard.plot_dashboard(_stacked(80))
  panel = {a.get_title(): a for a in fig.axes}
  assert "conflicting pairs (running mean of 2 steps) and cond(G)" in panel
  raw, mean = panel["combination weights"].get_lines()[:2]
  y = np.arange(80.0)
  np.testing.assert_allclose(raw.get_ydata(), y)
  np.testing.assert_allclose(mean.get_ydata(), np.concatenate([[0.0], y[1:] - 0.5]))
  # 119 steps still give 2 (119 // 40), 120 steps 3.
  titles = [{a.get_title() for a in dashboard.plot_dashboard(_stacked(t)).axes} for t in (119, 120)]
  assert "conflicting pairs (running mean of 2 steps) and cond(G)" in titles[0]
  assert "conflicting pairs (running mean of 3 steps) and cond(G)" in titles[1]


def test_a_window_of_two_draws_the_running_mean_over_the_raw_curve():
  fig = dashboard.plot_dashboard(_stacked(5), smooth=2)
  lines = {a.get_title(): a for a in fig.axes}["combination weights"].get_lines()
  assert len(lines) == 4                                       # raw and mean, two tasks
  np.testing.assert_allclose(lines[1].get_ydata(), [0.0, 0.5, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(lines[3].get_ydata(), [1.0, 1.5, 2.5, 3.5, 4.5])
