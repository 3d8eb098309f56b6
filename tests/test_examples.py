"""The examples: the toy demo's objective and claim, and the Flax training loop."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))

import flax_digits  # noqa: E402
import toy  # noqa: E402


@pytest.mark.parametrize("start, expected", [
    ((-8.5, 7.5), (0.655, 7.901)), ((0.0, 0.0), (0.0, 0.0)), ((9.0, 9.0), (0.794, 6.691)),
    ((-7.5, -0.5), (0.039, -4.754)), ((9.0, -1.0), (-0.883, 2.814))])
def test_toy_losses_match_reference_values(start, expected):
  """Values at the five starts as listed for the reference code (first loss × 0.1)."""
  np.testing.assert_allclose(np.asarray(toy.toy_losses(jnp.asarray(start))), expected, atol=1e-3)


@pytest.mark.parametrize("steps", [0, 30, 149])
def test_toy_run_refuses_steps_it_would_not_take(steps):
  with pytest.raises(ValueError, match="`steps` must be a positive multiple of record_every=50"):
    toy.run(cg.linear_scalarization(), steps)


def test_toy_run_refuses_a_bad_record_interval():
  with pytest.raises(ValueError, match="`record_every` must be a positive integer"):
    toy.run(cg.linear_scalarization(), 100, record_every=0)


@pytest.mark.slow
def test_sharded_example_runs_on_a_device_count_that_does_not_divide_its_batch():
  """Six devices: the example meshes a power of two of them (4), since 6 divides
  neither the batch (64) nor the width (512)."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=6",
             JAX_PLATFORMS="cpu")
  example = os.path.join(os.path.dirname(__file__), "..", "examples", "sharded_flax.py")
  result = subprocess.run([sys.executable, example, "--steps", "2"], capture_output=True,
                          text=True, env=env, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "mesh {'data': 1, 'model': 4}" in result.stdout


@pytest.mark.slow
def test_toy_demo_conicgrad_reaches_the_global_minimum_from_all_starts(tmp_path):
  """README's 5/5 for ConicGrad and 4/5 for the mean gradient (float64, 60,000 steps),
  with a margin: eight starts within 1e-4 of (9, 9), the start that passes close to the
  edge of a flat region, all reach the minimum with ConicGrad and all miss it with the
  mean gradient, so the counts do not hang on rounding."""
  out = tmp_path / "toy.png"
  reached = toy.main(["--out", str(out)])
  assert reached["ConicGrad (c=0.5)"] == 5
  assert reached["Mean gradient"] == 4
  assert out.stat().st_size > 10_000
  best, _ = toy.global_minimum_of_mean_loss()
  near = np.array([9.0, 9.0]) + 1e-4 * np.random.default_rng(0).standard_normal((8, 2))
  for method, hits in ((cg.conicgrad(0.5, num_tasks=2), 8),
                       (cg.linear_scalarization("mean", num_tasks=2), 0)):
    _, final = toy.run(method, 60_000, starts=near)
    assert np.sum(final.mean(1) <= best + toy.REACHED_TOL) == hits


@pytest.mark.slow
def test_flax_training_loop_lowers_both_task_losses():
  history, metrics = flax_digits.train(steps=200, verbose=False)
  first, last = history[:10].mean(0), history[-20:].mean(0)
  assert np.all(last < 0.3 * first), (first, last)
  assert metrics["test_accuracy_digit"] > 0.9
  assert metrics["test_accuracy_parity"] > 0.9
