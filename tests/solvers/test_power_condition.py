"""The Nash-MTL / FairGrad fixed point G w = w^(−1/α) across gradient scales."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conicgrad_jax.solvers.power_condition import solve_power_condition


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_scaling_the_gradients_scales_the_weights_exactly(alpha):
  """Gradients t·g give G t², hence w(t²G) = t^(−2α/(α+1))·w(G): for Nash-MTL (α = 1)
  the update Jᵀw does not depend on t. In float32, for t from 1e-12 to 1e12 (gradient
  norms ~1e-12 to 1e12: ‖G‖_F computed as Σ G_ij² over- and underflowed there)."""
  rng = np.random.default_rng(0)
  J = rng.standard_normal((3, 6))
  J[1:] -= 0.5 * J[0]
  solve = jax.jit(lambda G: solve_power_condition(G, alpha)[0])
  base = np.asarray(solve(jnp.asarray(J @ J.T, jnp.float32)), np.float64)
  for t in (1e-12, 1e-6, 1e6, 1e12):
    w = np.asarray(solve(jnp.asarray((t * J) @ (t * J).T, jnp.float32)), np.float64)
    np.testing.assert_allclose(w * t ** (2 * alpha / (alpha + 1)), base, rtol=1e-4,
                               err_msg=str(t))
