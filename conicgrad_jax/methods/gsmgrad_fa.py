r"""GSMGrad-FA: the GSMGrad weight step with Gw estimated from the loss decrease (no Gram matrix)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.methods import gsmgrad as gsmgrad_m


class GSMGradFAState(NamedTuple):
  """State of :func:`gsmgrad_fa`.

  Attributes:
    weights: the simplex weights w of the last update.
    prev_losses: the losses of the previous update.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  prev_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def gsmgrad_fa_loss(losses: jax.Array, weights: jax.Array) -> jax.Array:
  r"""Σ_i w_i l_i with the GSMGrad-FA weights held fixed: back-propagate this once for the update."""
  validation.check_task_vectors("gsmgrad_fa_loss", "losses", losses, weights=weights,
                                scalar_ok=("weights",))
  return jnp.sum(jax.lax.stop_gradient(weights) * losses)


def gsmgrad_fa_weighting(losses: jax.Array, state: GSMGradFAState, *, lr: float = 0.1,
                         rho: float = 0.01) -> tuple[jax.Array, GSMGradFAState]:
  r"""w ← Π_Δ(w − β(δ/‖δ‖ + ρw)), δ = l_prev − l (from the second call on).

  Returns ``(weights, new_state)``.
  """
  dtype = state.weights.dtype
  losses = losses.astype(dtype)
  delta = state.prev_losses - losses
  direction = delta / jnp.maximum(jnp.linalg.norm(delta), 1e-12)
  w = state.weights
  stepped = _numeric.project_simplex(w - lr * (direction + rho * w))
  w = jnp.where(state.step > 0, stepped, w)
  return w, state._replace(weights=w, prev_losses=losses, step=state.step + 1)


def gsmgrad_fa(*, lr: float = 0.1, rho: float = 0.01,
               shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
               precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""GSMGrad-FA: GSMGrad's weight step at the cost of one forward pass (no task gradients).

  After a step x_{t+1} = x_t − α d_t with d_t = Σ_i w_i g_i, a first-order
  expansion gives F(x_t) − F(x_{t+1}) ≈ α G_t w_t, so the weight gradient of
  :func:`~conicgrad_jax.gsmgrad` is estimated from the loss decrease (the
  paper's "fast approximation", O(1) memory in K):

  .. math::

     \delta_t = l_{t-1} - l_t, \qquad
     w_{t+1} = \Pi_\Delta\big(w_t - \beta(\delta_t/\|\delta_t\| + \rho w_t)\big).

  The first update uses uniform weights.

  Args:
    lr: β > 0, the step size.
    rho: ρ ≥ 0, the regularisation.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GSMGradFAState`. ``update(task_grads, state, params=None, *,
    losses)`` needs ``losses=`` (shape (K,), at the current parameters; the
    previous call's are kept in the state) and ignores other keyword
    arguments; non-finite losses skip the step. Only the losses are used:
    back-propagate :func:`gsmgrad_fa_loss` with ``state.weights`` instead of
    stacking task gradients for constant cost.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.gsmgrad_fa()
    >>> grads = {"w": jnp.eye(2)}
    >>> _, state = tx.update(grads, tx.init(None), losses=jnp.array([2.0, 2.0]))
    >>> _, state = tx.update(grads, state, losses=jnp.array([1.0, 2.0]))  # task 0 improved
    >>> bool(state.weights[0] < state.weights[1])
    True

  References:
    Zhang, Xiao, Zou & Ji, "MGDA Converges under Generalized Smoothness,
    Provably", ICLR 2025 (arXiv:2405.19440), the MGDA-FA variant.

  Deviations: δ_t is normalised to unit length, which removes the unknown
  step size α (under Adam the step is not α d_t anyway) and makes β
  scale-free; the paper divides by α. The losses are those of consecutive
  calls (re-evaluate the same batch after the step, as the paper does, or
  accept the noise of consecutive batches). β = 0.1, ρ = 0.01 are this
  library's defaults.
  """
  gsmgrad_m.check_step_options(lr, rho)

  def init_state(k, dtype=jnp.float32):
    return GSMGradFAState(aggregator.placeholder_weights(k, dtype), jnp.zeros((k or 0,), dtype),
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    return gsmgrad_fa_weighting(losses, state, lr=lr, rho=rho)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "gsmgrad_fa", shared=shared, num_tasks=num_tasks, precision=precision)
