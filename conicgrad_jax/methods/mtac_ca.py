"""MTAC-CA: multi-task actor-critic's conflict-avoidant task weighting (tracked regularised min-norm)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _double_sampling


class MTACState(NamedTuple):
  """State of :func:`mtac_ca`.

  Attributes:
    weights: the simplex task weights λ of the last update (carried to the next).
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def check_options(lr, rho, steps):
  validation.check_positive("lr", lr)
  validation.check_positive("rho", rho, allow_zero=True)
  validation.check_positive_int("steps", steps)


def init_state(k, dtype=jnp.float32):
  """Uniform λ (or empty until K is known)."""
  return MTACState(aggregator.placeholder_weights(k, dtype), jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.int32))


def mtac_ca_weighting(gram: jax.Array, weights: jax.Array, *, lr: float = 0.5,
                      rho: float = 0.01, steps: int = 1):
  r"""``steps`` projected steps λ ← Π_Δ(λ − β(M̂λ + ρλ)) from ``weights``; returns (λ, SolverInfo).

  M̂ = M/‖M‖_F with M the Gram matrix, or the doubly-sampled cross-Gram
  G_{ξ1}G_{ξ2}ᵀ (possibly not symmetric). On a fixed M the iterates converge
  to argmin_{λ∈Δ} ½λᵀM̂λ + ½ρ‖λ‖² for β ≤ 1/(1 + ρ).

  Args:
    gram: (K, K) Gram or cross-Gram matrix.
    weights: (K,) current simplex weights λ.
    lr: the weight step size β.
    rho: the regularisation ρ ≥ 0.
    steps: projected steps to take.

  Returns:
    ``(weights, SolverInfo(iterations=steps))``.

  Example:
    >>> import jax.numpy as jnp
    >>> w, _ = mtac_ca_weighting(jnp.diag(jnp.array([1.0, 4.0])), jnp.array([0.5, 0.5]))
    >>> bool(w[0] > 0.5), round(float(w.sum()), 4)
    (True, 1.0)
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  m = gram.astype(dtype)
  m = m / _numeric.frobenius_norm(m)

  def step(_, w):
    return _numeric.project_simplex(w - lr * (_numeric.matvec(m, w) + rho * w))

  w = jax.lax.fori_loop(0, steps, step, weights.astype(dtype))
  return w, aggregator.SolverInfo(jnp.asarray(steps, jnp.int32))


def mtac_ca(lr: float = 0.5, *, rho: float = 0.01, steps: int = 1,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""MTAC-CA: task weights that track the conflict-avoidant (regularised min-norm) direction.

  At every update (every actor step of multi-task actor-critic) the task
  weights take a stochastic projected-gradient step on the ρ-regularised
  min-norm problem over the simplex, and the update is the λ-combination:

    λ_{t+1} = Π_Δ(λ_t − β(M̂_t λ_t + ρλ_t)),   d_t = Σ_k λ_{t+1,k} g_k,

  M_t = G_{ξ1} G_{ξ2}ᵀ from two further independent samples of the task
  gradients (double sampling: an unbiased estimate of JJᵀ, the paper's CA
  weight update) when ``weight_grads`` is given, else the Gram matrix of the
  update's own gradients (a biased, cheaper estimate); M̂ = M/‖M‖_F. Because
  the objective is ρ-strongly convex, λ_t tracks its unique minimiser and d_t
  the conflict-avoidant direction Jᵀλ*_ρ, the min-norm point of the convex
  hull of the task gradients up to O(ρ).

  Choices (the algorithm box and step sizes of the reference were not
  available; the method is built from its description and from the same
  group's SDMGrad and GSMGrad, :func:`~conicgrad_jax.sdmgrad`,
  :func:`~conicgrad_jax.gsmgrad`):

  * one projected step per update (``steps``), from λ₀ = 1/K, no warm start
    (GSMGrad's warm start is not part of MTAC); with ``steps=1`` and no
    ``weight_grads`` this equals ``gsmgrad(lr=lr, rho=rho, warm_start_steps=1)``;
  * M is normalised by its Frobenius norm, as GSMGrad here, so β is
    scale-free (the paper steps with raw gradients and decaying β);
  * the update uses λ_{t+1} (the step's result), SDMGrad's order;
  * constant β = 0.5 and ρ = 0.01 (ours); the analysis takes ρ = O(ε);
  * the double sampling is optional: RL rollouts give one sample per step
    unless the caller splits them.

  Args:
    lr: the weight step size β (> 0); stable for β ≤ 1/(1 + ρ).
    rho: the regularisation ρ (≥ 0).
    steps: projected weight steps per update (positive int).
    shared: which leaves are shared: ``None`` (all), a pytree of bools or a
      predicate ``(key_path, leaf) -> bool``; other leaves get Σ_k g_k.
    num_tasks: K, if known at construction (fixes the state's shapes).
    precision: matmul precision of the Gram matrix and the combination.

  ``update(task_grads, state, params=None, weight_grads=None)``:
  ``weight_grads=(grads_1, grads_2)`` are two further stacked task-gradient
  samples: full pytrees like the task gradients (their shared leaves are
  selected by ``shared``), or lists of the shared leaves in ``tree_leaves``
  order. Other keyword arguments are ignored.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is
    :class:`MTACState`.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = mtac_ca(num_tasks=2)
    >>> u, s = tx.update({"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}, tx.init(None))
    >>> bool(s.weights[0] > s.weights[1]), round(float(s.weights.sum()), 4)
    (True, 1.0)

  References:
    Wang, Xiao, Ban, Ji & Zou, multi-task actor-critic with
    conflict-avoidant (CA) and fast-convergence (FC) task weighting,
    arXiv:2405.16077 (published as MOAC-CA / MOAC-FC).
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple and
    Provable Stochastic Algorithms" (SDMGrad), NeurIPS 2023.
  """
  validation.check_precision(precision)
  check_options(lr, rho, steps)

  def aggregate(leaves, state, weight_grads=None, **_):
    m, finite = _double_sampling.weight_matrix(leaves, weight_grads, shared, precision)
    w, _ = mtac_ca_weighting(m, state.weights, lr=lr, rho=rho, steps=steps)
    updates = [linalg.combine_leaf(w, l, _numeric.solver_dtype(l.dtype), precision)
               for l in leaves]
    return updates, state._replace(weights=w, step=state.step + 1), finite

  return aggregator.stacked_gradient_transformation(
      aggregate, init_state, shared=shared, num_tasks=num_tasks)
