"""The loss weightings as a family: the ``losses=`` contract, x64 states, training, option checks."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from loss_runs import G2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import flax_digits  # noqa: E402

LOSS_METHODS = sorted(n for n, i in cg.methods().items()
                      if i.needs_losses and not i.gram_weighting and not i.needs_jacobian)

# Every method with its own module in this family, and whether init needs the parameters.
OWN_METHODS = ["bilb4mtl", "db_mtl", "dwa", "famo", "gls", "graddrop", "gradnorm", "gsmgrad",
               "gsmgrad_fa", "imtl_l", "linear_scalarization", "moco", "rlw", "rotograd",
               "sdmgrad", "stch", "uncertainty_weighting"]


@pytest.mark.parametrize("name", LOSS_METHODS)
def test_missing_or_bad_losses_are_errors_and_nan_is_skipped(name):
  tx = cg.methods()[name].factory()
  with pytest.raises(ValueError, match="losses"):
    tx.update(G2, tx.init(None))
  with pytest.raises(ValueError, match=r"shape \(3,\)"):
    tx.update(G2, tx.init(None), losses=jnp.ones(3))
  u, state = jax.jit(tx.update)(G2, tx.init(None), losses=jnp.array([jnp.nan, 1.0]))
  assert np.all(np.asarray(u["w"]) == 0.0) and int(state.nonfinite_steps) == 1


# Methods that take log l or divide by l: a loss ≤ 0 has no meaning for them.
POSITIVE_LOSS_METHODS = {
    "uncertainty_weighting": cg.uncertainty_weighting, "imtl_l": cg.imtl_l, "gls": cg.gls,
    "stch": cg.stch, "famo": cg.famo, "scale_invariant_ls": cg.scale_invariant_ls,
    "bilb4mtl (log)": lambda: cg.bilb4mtl(normalization="log"),
    "bilb4mtl (rescaled)": lambda: cg.bilb4mtl(normalization="rescaled")}


@pytest.mark.parametrize("name", sorted(POSITIVE_LOSS_METHODS))
@pytest.mark.parametrize("losses", [[0.0, 1.0], [-0.5, 2.0]])
def test_losses_at_or_below_zero_skip_the_step(name, losses):
  tx = POSITIVE_LOSS_METHODS[name]()
  u, state = jax.jit(tx.update)(G2, tx.init(None), losses=jnp.array(losses))
  if name == "famo" and losses[0] == 0.0:
    # FAMO takes log(l − min + 10⁻⁸): a zero loss is inside its domain.
    assert int(state.nonfinite_steps) == 0 and np.all(np.isfinite(np.asarray(u["w"])))
    return
  assert np.all(np.asarray(u["w"]) == 0.0) and int(state.nonfinite_steps) == 1


@pytest.mark.parametrize("factory", [cg.uncertainty_weighting, cg.imtl_l])
def test_learned_log_scales_stay_finite_and_recover(factory):
  """Losses near 0 drive s towards ∓∞ and losses of 1e20 square to Inf in Adam's
  second moment; s is bounded and Adam's gradient clipped, so no step is lost."""
  tx = factory(lr=1.0, num_tasks=2)
  step = jax.jit(tx.update)
  state = tx.init(None)
  for _ in range(100):
    u, state = step(G2, state, losses=jnp.array([1e-30, 1.0]))
  bound = 0.5 * np.log(np.finfo(np.float32).max)
  s = np.asarray(state.log_scales)
  assert np.all(np.isfinite(np.asarray(u["w"]))) and int(state.nonfinite_steps) == 0
  assert abs(s[0]) == pytest.approx(bound, rel=1e-6)      # held at the bound, not beyond
  for _ in range(20):
    u, state = step(G2, state, losses=jnp.array([1.0, 1.0]))
  assert abs(float(state.log_scales[0])) < bound - 10.0   # back from the bound, one lr a step
  u, state = step(G2, state, losses=jnp.array([1e20, 1.0]))
  assert np.all(np.isfinite(np.asarray(u["w"]))) and int(state.nonfinite_steps) == 0
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree_util.tree_leaves(state))


@pytest.mark.parametrize("name", OWN_METHODS)
def test_state_floats_follow_the_parameters_dtype_under_x64(name):
  """float64 parameters: every float in the state is float64, at init and after an update.

  The update is traced, not compiled (``eval_shape``): a scan or loop carry whose
  dtype changed would fail there.
  """
  with jax.enable_x64(True):
    params = {"w": jnp.zeros(3, jnp.float64)}
    tx = cg.methods()[name].factory(num_tasks=2)
    grads = {"w": jnp.asarray([[1.0, 0.5, 0.0], [0.0, 1.0, 2.0]], jnp.float64)}
    state = tx.init(params)
    _, new = jax.eval_shape(lambda g, s: tx.update(g, s, params, losses=jnp.ones(2, jnp.float64)),
                            grads, state)
    for s in (state, new):
      assert s.weights.dtype == jnp.float64, name
      floats = [l.dtype for l in jax.tree_util.tree_leaves(s)
                if jnp.issubdtype(l.dtype, jnp.floating)]
      assert all(d == jnp.float64 for d in floats), (name, floats)


# Two methods train in the default suite (one static-weight, one learned-weight
# family member); every loss weighting trains in ``-m slow``.
TRAINED_BY_DEFAULT = ("famo", "uncertainty_weighting")


@pytest.mark.parametrize("name", [
    n if n in TRAINED_BY_DEFAULT else pytest.param(n, marks=pytest.mark.slow)
    for n in LOSS_METHODS])
def test_trains_the_digits_two_task_example(name):
  method = cg.methods()[name].factory(shared=flax_digits.is_shared, num_tasks=2)
  history, metrics = flax_digits.train(steps=150, verbose=False, method=method)
  first, last = history[:10].mean(0), history[-20:].mean(0)
  assert np.all(last < 0.3 * first), (first, last)
  assert metrics["test_accuracy_digit"] > 0.9 and metrics["test_accuracy_parity"] > 0.9
