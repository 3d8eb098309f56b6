"""graddrop: agreeing coordinates kept, one sign elsewhere, the leak."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax import aggregator
from conicgrad_jax.methods import graddrop as graddrop_m


def test_graddrop_keeps_agreeing_coordinates_and_one_sign_elsewhere():
  J = np.array([[1.0, 2.0, -1.0, 0.5], [3.0, -2.0, -4.0, -0.5]])
  tx = cg.graddrop(seed=0)
  u, state = tx.update({"w": jnp.asarray(J, jnp.float32)}, tx.init(None))
  u = np.asarray(u["w"])
  assert u[0] == pytest.approx(4.0) and u[2] == pytest.approx(-5.0)  # signs agree: kept
  for j in (1, 3):                                                    # mixed: one sign survives
    assert u[j] == pytest.approx(J[J[:, j] > 0, j].sum()) or u[j] == pytest.approx(J[J[:, j] < 0, j].sum())
  assert np.all((np.asarray(state.weights) > 0) & (np.asarray(state.weights) <= 1))


def test_sign_survives_with_the_purity_probability_and_leak_keeps_a_fraction():
  """P(positive sign kept) = P = ½(1 + Σg/Σ|g|), over many keys at once (vmap)."""
  g = jnp.array([[3.0], [-1.0]])                    # P = ½(1 + 2/4) = 0.75
  state0 = aggregator.keyed_state(0)(2)
  keys = jax.random.split(jax.random.PRNGKey(1), 4000)
  run = jax.vmap(lambda key, leak: graddrop_m.graddrop_aggregation(
      [g], state0._replace(key=key), leak=leak)[0][0][0], in_axes=(0, None))
  u = np.asarray(run(keys, 0.0))
  assert set(np.round(u, 5)) <= {3.0, -1.0}
  assert np.mean(u == 3.0) == pytest.approx(0.75, abs=0.03)
  u_leak = np.asarray(run(keys, 0.5))              # ℓ + (1 − ℓ)M: the dropped one keeps half
  assert set(np.round(u_leak, 5)) <= {3.0 - 0.5, -1.0 + 1.5}
