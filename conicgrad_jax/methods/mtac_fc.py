"""MTAC-FC: multi-task actor-critic's fast-convergence task weighting (one cheap unregularised step)."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import mtac_ca as _ca



class MTACFCState(NamedTuple):
  """State of :func:`mtac_fc`.

  Attributes:
    weights: the simplex task weights λ_t of the last update (d_t = Σ_k λ_{t,k} g_k).
    next_weights: λ_{t+1}, the weights the next update uses.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  next_weights: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def _init_state(k, dtype=jnp.float32):
  """Uniform λ₀ (or empty until K is known)."""
  uniform = aggregator.placeholder_weights(k, dtype)
  return MTACFCState(uniform, uniform, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def mtac_fc_weighting(gram: jax.Array, weights: jax.Array, *, lr: float = 0.1):
  r"""One step λ ← Π_Δ(λ − β Gλ/tr G) from ``weights``; returns (λ, SolverInfo).

  Gλ is the weight gradient of ½‖Jᵀλ‖²; dividing by tr G = Σ_k ‖g_k‖²
  (≥ λ_max(G)) makes β scale-free and any β ≤ 1 a descent step.

  Args:
    gram: (K, K) Gram matrix of the task gradients.
    weights: (K,) current simplex weights λ.
    lr: the weight step size β.

  Returns:
    ``(weights, SolverInfo(iterations=1))``.

  Example:
    >>> import jax.numpy as jnp
    >>> w, _ = mtac_fc_weighting(jnp.diag(jnp.array([1.0, 4.0])), jnp.array([0.5, 0.5]))
    >>> bool(w[0] > 0.5), round(float(w.sum()), 4)
    (True, 1.0)
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  w = weights.astype(dtype)
  return _step(w, _numeric.matvec(gram, w), jnp.trace(gram), lr), aggregator.SolverInfo(
      jnp.ones((), jnp.int32))


def _step(w, gw, trace, lr):
  scale = jnp.maximum(trace, jnp.finfo(w.dtype).tiny)
  return _numeric.project_simplex(w - lr * gw / scale)


def mtac_fc(lr: float = 0.1, *, shared: validation.SharedSpec = None,
            num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""MTAC-FC: the update with the current task weights, then one cheap unregularised weight step.

    d_t = Σ_k λ_{t,k} g_k,   λ_{t+1} = Π_Δ(λ_t − β J_t d_t / Σ_k ‖g_k‖²),

  J_t d_t = G_t λ_t is the gradient of ½‖Jᵀλ‖² at λ_t, computed as K inner
  products with the update direction itself (O(Km), no K×K Gram matrix: the
  cheaper weight update). With no regularisation and a single sample the
  weights do not converge to the conflict-avoidant point λ*; on a fixed J each
  step decreases ‖Jᵀλ‖ (β ≤ 1), so ‖d_t − d*‖² ≤ ‖d_t‖² − ‖d*‖² stays below
  its initial value: the direction keeps a bounded distance to the
  conflict-avoidant direction d* = Jᵀλ*, the trade the fast-convergence
  variant makes for its better sample complexity (O(ε⁻³) against CA's
  O(ε⁻⁵) in the reference).

  Choices (the algorithm box and step sizes of the reference were not
  available; built from its description and the group's SDMGrad/GSMGrad,
  see :func:`~conicgrad_jax.mtac_ca`):

  * the update uses λ_t, the weights before this step (one sample serves
    both; CA uses λ_{t+1});
  * no regularisation (ρ = 0) and no double sampling;
  * the weight gradient is normalised by tr G = Σ_k ‖g_k‖² (K norms, cheap),
    not by ‖G‖_F as in CA (which needs the whole Gram matrix);
  * λ₀ = 1/K; constant β = 0.1 (ours; the reference's schedules were not
    available).

  Args:
    lr: the weight step size β (> 0); a descent step for β ≤ 1.
    shared: which leaves are shared: ``None`` (all), a pytree of bools or a
      predicate ``(key_path, leaf) -> bool``; other leaves get Σ_k g_k.
    num_tasks: K, if known at construction (fixes the state's shapes).
    precision: matmul precision of the inner products and the combination.

  ``update(task_grads, state, params=None)`` needs no extra arguments and
  ignores unknown ones.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is an
    :class:`MTACFCState`: ``weights`` are the λ_t of the update just made,
    ``next_weights`` the λ_{t+1} of the next.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = mtac_fc(num_tasks=2)
    >>> u, s = tx.update({"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}, tx.init(None))
    >>> [round(float(v), 2) for v in u["w"]]   # uniform weights on the first update
    [0.5, 1.0]
    >>> bool(s.next_weights[0] > s.next_weights[1])   # λ₁ favours the smaller gradient
    True

  References:
    Wang, Xiao, Ban, Ji & Zou, multi-task actor-critic with
    conflict-avoidant (CA) and fast-convergence (FC) task weighting,
    arXiv:2405.16077 (published as MOAC-CA / MOAC-FC).
  """
  validation.check_precision(precision)
  _ca.check_options(lr, 0.0, 1)

  def aggregate(leaves, state, **_):
    dtypes = [_numeric.solver_dtype(l.dtype) for l in leaves]
    w = state.next_weights
    updates = [linalg.combine_leaf(w, l, dt, precision) for l, dt in zip(leaves, dtypes)]
    gw, trace = 0.0, 0.0
    for l, d, dt in zip(leaves, updates, dtypes):
      axes = tuple(range(1, l.ndim))
      gw = gw + jax.lax.dot_general(l, d.astype(l.dtype), ((axes, tuple(range(d.ndim))),
                                                           ((), ())),
                                    precision=precision, preferred_element_type=dt)
      trace = trace + jnp.sum(jnp.square(l.astype(dt)))
    finite = jnp.isfinite(trace) & jnp.all(jnp.isfinite(gw))
    new_w = _step(w.astype(gw.dtype), gw, trace, lr)
    return updates, state._replace(weights=w, next_weights=new_w, step=state.step + 1), finite

  return aggregator.stacked_gradient_transformation(
      aggregate, _init_state, shared=shared, num_tasks=num_tasks)
