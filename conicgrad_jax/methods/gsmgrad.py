r"""GSMGrad: single-loop MGDA, one warm-started projected-gradient step on the weights per update."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


class GSMGradState(NamedTuple):
  """State of :func:`gsmgrad`.

  Attributes:
    weights: the simplex weights w of the last update (the next one starts there).
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def check_step_options(lr, rho):
  """Eager checks of the weight step's ``lr`` (> 0) and ``rho`` (≥ 0)."""
  validation.check_positive("lr", lr)
  validation.check_positive("rho", rho, allow_zero=True)


def gsmgrad_weighting(gram: jax.Array, state: GSMGradState, *, lr: float = 0.5,
                      rho: float = 0.01, warm_start_steps: int = 100
                      ) -> tuple[jax.Array, GSMGradState]:
  r"""Projected-gradient steps w ← Π_Δ(w − β(Ĝw + ρw)), Ĝ = G/‖G‖_F, from ``state.weights``.

  One step, or ``warm_start_steps`` at the first call. Returns
  ``(weights, new_state)``.
  """
  g_hat = gram / _numeric.frobenius_norm(gram)

  def step(_, w):
    return _numeric.project_simplex(w - lr * (_numeric.matvec(g_hat, w) + rho * w))

  n = jnp.where(state.step == 0, warm_start_steps, 1)
  w = jax.lax.fori_loop(0, n, step, state.weights.astype(gram.dtype))
  return w, state._replace(weights=w, step=state.step + 1)


def gsmgrad(*, lr: float = 0.5, rho: float = 0.01, warm_start_steps: int = 100,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""GSMGrad: track the MGDA weights across steps instead of solving for them at each one.

  .. math::

     w_{t+1} = \Pi_\Delta\big(w_t - \beta(\hat G_t w_t + \rho w_t)\big),
     \qquad d_t = \sum_i w_{t+1,i}\, g_i,

  one projected gradient step per update on the ρ-regularised min-norm
  problem min_{w∈Δ} ½ wᵀĜw + ½ρ‖w‖² (ρ-strongly convex, so the iterates
  track a unique solution). The first update runs ``warm_start_steps`` such
  steps on its own G (the paper's warm start). Weights sum to 1.

  Args:
    lr: β > 0, the step size on Ĝ (≤ 1 is stable, λ_max(Ĝ) ≤ 1).
    rho: ρ ≥ 0, the regularisation relative to ‖G‖_F.
    warm_start_steps: steps of the first update.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`GSMGradState`. ``update(task_grads, state, params=None)`` needs
    no extra arguments and ignores any.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.gsmgrad(rho=0.0, warm_start_steps=500)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> u, state = tx.update(grads, tx.init(None))
    >>> [round(float(w), 2) + 0.0 for w in state.weights]   # MGDA: w ∝ 1/‖g_i‖²
    [0.8, 0.2]

  References:
    Zhang, Xiao, Zou & Ji, "MGDA Converges under Generalized Smoothness,
    Provably", ICLR 2025 (arXiv:2405.19440).

  Deviations: the paper steps with the raw G; here Ĝ = G/‖G‖_F, so one
  β ∈ (0, 1] is stable at every gradient scale and the iterates are
  invariant to rescaling all gradients (ρ is relative to ‖G‖_F). The
  paper's step sizes for its experiments were not available; β = 0.5,
  ρ = 0.01 and N = 100 are this library's defaults.
  """
  check_step_options(lr, rho)
  validation.check_positive_int("warm_start_steps", warm_start_steps)

  def init_state(k, dtype=jnp.float32):
    return GSMGradState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32),
                        jnp.zeros((), jnp.int32))

  def weigh(gram, state, **_):
    return gsmgrad_weighting(gram, state, lr=lr, rho=rho, warm_start_steps=warm_start_steps)[1]

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)
