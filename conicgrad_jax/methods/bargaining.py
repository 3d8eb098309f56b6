"""Nash-MTL and FairGrad: weights w > 0 with G w = w^(−1/α)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.weighting import bargaining


class NashMTLState(NamedTuple):
  """State of :func:`nash_mtl`: the last weights (reused between recomputations), the step."""
  weights: jax.Array
  step: jax.Array
  iterations: jax.Array
  nonfinite_steps: jax.Array


def nash_mtl(*, update_weights_every: int = 1, max_norm: float = 1.0, max_iter: int = 100,
             shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Nash-MTL: the Nash bargaining solution α > 0, Gα = 1/α, d = Σ_i α_i g_i.

  α is recomputed every ``update_weights_every`` steps (reused in between) by
  Newton's method on ½αᵀGα − Σ log α_i (``max_iter`` Newton steps; the
  reference runs ≤ 20 rounds of a CVXPY/ECOS convex-concave procedure, warm
  started). If ‖d‖ > ``max_norm`` (> 0) the weights are scaled down to it
  (torchjd's form of the reference clipping). α lives on the gradients'
  scale (α ~ 1/‖g‖), with no extra ×K. G is regularised by 1e-6·I after
  Frobenius normalisation, since a rank-deficient G has no finite solution.

  References:
    Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022.
  """
  validation.check_positive_int("update_weights_every", update_weights_every)
  validation.check_positive_int("max_iter", max_iter)

  def init_state(k, dtype=jnp.float32):
    zero = jnp.zeros((), jnp.int32)
    return NashMTLState(aggregator.placeholder_weights(k, dtype), zero, zero, zero)


  def weigh(gram, state, **_):
    def solve(_):
      w, it = bargaining.nash_mtl_weighting(gram, max_norm=max_norm, max_iter=max_iter)
      return w.astype(state.weights.dtype), it.astype(jnp.int32)

    recompute = state.step % update_weights_every == 0
    weights, iterations = jax.lax.cond(recompute, solve,
                                       lambda _: (state.weights, jnp.zeros((), jnp.int32)), None)
    return state._replace(weights=weights, iterations=iterations, step=state.step + 1)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)


def fairgrad(alpha: float = 2.0, *, max_norm: float = 0.0, max_iter: int = 100,
             shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""FairGrad: α-fair weights w > 0 with G w = w^{−1/α}, d = Σ_i w_i g_i.

  Default α = 2, as in every official run script (the parser's default is 1,
  which is Nash-MTL's condition). ``max_norm`` > 0 scales the update down to
  that norm (the official code clips at 1.0; LibMTL does not clip).

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024.
  """
  a = validation.concrete_float(alpha)
  if a is None or not a > 0:
    raise ValueError(f"`alpha` must be a positive number, got {alpha!r}.")

  def weights_fn(gram, **_):
    return bargaining.fairgrad_weighting(gram, a, max_norm=max_norm, max_iter=max_iter)

  return aggregator.stateless_gram_method(weights_fn, shared=shared, num_tasks=num_tasks,
                                         precision=precision)
