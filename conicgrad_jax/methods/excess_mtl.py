"""ExcessMTL: exponentiated-gradient task weights driven by excess-risk estimates."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.methods import _gradient_buffers as buf

_EPS = 1e-7


class ExcessMTLState(NamedTuple):
  """State of :func:`excess_mtl`.

  Attributes:
    weights: the task weights α (on the simplex).
    sq_grad_sums: per shared leaf, Σ_t g_t² (shape (K, *param_shape)), the
      AdaGrad-style diagonal curvature estimate.
    baseline: the excess risks the later ones are divided by (set after warm-up).
    warmup_sum: Σ of the excess risks seen during warm-up.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  sq_grad_sums: list
  baseline: jax.Array
  warmup_sum: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def excess_risks(leaves, sq_grad_sums) -> jax.Array:
  r"""Ê_i = Σ_c g_{i,c}² / (S_{i,c} + 1e-7)^½ over the given stacked leaves (gᵀ H⁻¹ g, H diagonal)."""
  return sum(linalg.per_task_sum(jnp.square(g) / jnp.sqrt(s + _EPS))
             for g, s in zip(leaves, sq_grad_sums))


def excess_mtl_weighting(weights: jax.Array, risks: jax.Array, baseline: jax.Array, *,
                         robust_step_size: float = 1.0) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""One exponentiated-gradient step: α ← softmax(log α + η Ê/(Ê₀ + 1e-7)).

  Args:
    weights: the previous α on the simplex.
    risks: the excess-risk estimates Ê (K,).
    baseline: Ê₀ (K,), the scale each task's risk is measured against; a
      task with Ê₀ = 0 (no positive risk yet) counts as Ê/Ê₀ = 0: it has
      nothing left to learn, so it gets the smallest step.
    robust_step_size: η > 0.

  Returns:
    ``(new α, SolverInfo)``.
  """
  dtype = _numeric.solver_dtype(weights.dtype)
  baseline = baseline.astype(dtype)
  scaled = jnp.where(baseline > 0, risks.astype(dtype) / (baseline + _EPS), 0.0)
  logits = jnp.log(weights.astype(dtype)) + robust_step_size * scaled
  return jax.nn.softmax(logits), aggregator.no_solver_info()


def excess_mtl(robust_step_size: float = 1.0, *, n_warmup_steps: int = 0,
               num_tasks: Optional[int] = None,
               shared: validation.SharedSpec = None) -> optax.GradientTransformationExtraArgs:
  r"""ExcessMTL: up-weight the tasks whose excess risk (distance to their optimum) is largest.

  With S_i ← S_i + g_i² (elementwise, from the first step on) and the
  excess-risk proxy Ê_i = g_iᵀ diag(S_i + 1e-7)^{-½} g_i (a second-order
  Taylor estimate with an AdaGrad curvature):

  .. math::
    \alpha \leftarrow \mathrm{softmax}\big(\log \alpha + \eta\, \hat E / (\hat E_0 + 10^{-7})\big),
    \qquad d = \sum_i \alpha_i g_i,

  α₀ uniform. During the first ``n_warmup_steps`` updates α stays uniform and
  Ê is averaged into the baseline Ê₀; with no warm-up Ê₀ is the first
  update's Ê, and that update leaves α uniform (as LibMTL). A
  task whose Ê₀ is 0 (its gradient vanished until then) counts as
  Ê/Ê₀ = 0 (torchjd computes 0/(0 + 1e-7); LibMTL 0/0), and takes its first
  positive Ê as Ê₀. Memory
  O(Km) (S has the stacked gradients' shape).

  Args:
    robust_step_size: η > 0, the exponentiated-gradient step size.
    n_warmup_steps: updates with uniform weights that collect the baseline
      (the paper's appendix uses 3 epochs).
    num_tasks: K; required (the state holds K-stacked buffers).
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
      ``init`` needs the parameters to shape the buffers.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an
    :class:`ExcessMTLState`. ``update`` needs no extra arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = excess_mtl(1.0, num_tasks=2)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for g in ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 0.1]]):
    ...   _, state = tx.update({"w": jnp.array(g)}, state, params)
    >>> bool(state.weights[0] > state.weights[1])   # task 0's risk stayed higher
    True

  References:
    He, Zhou, Zhang, Yun, Xu, Zeng, Chilimbi & Zhao, "Robust Multi-Task
    Learning with Excess Risks",
    ICML 2024; torchjd 0.18 ``ExcessMTLWeighting``; LibMTL ``ExcessMTL``.

  Deviations: weights on the simplex (torchjd and the paper; LibMTL and the
  official code keep them summing to K — multiply by K for their scale). With
  ``n_warmup_steps=0`` the first update only sets Ê₀ = Ê, so α stays
  uniform, as LibMTL (torchjd instead applies the undivided Ê once); with a
  warm-up it matches torchjd step for step, except for a task whose Ê₀ is 0
  and whose gradient later appears: the references divide its risks by 1e-7
  for good (which shuts the other tasks out), here its first positive Ê
  becomes its Ê₀.
  """
  validation.check_positive("robust_step_size", robust_step_size)
  n_warmup_steps = validation.check_non_negative_int("n_warmup_steps", n_warmup_steps)
  if num_tasks is None:
    raise ValueError("excess_mtl keeps K-stacked squared-gradient sums in its state: pass "
                     "`num_tasks`.")

  def init_state(k, dtype, params):
    sums = buf.zero_buffers(shared, params, k, "excess_mtl")
    return ExcessMTLState(aggregator.placeholder_weights(k, dtype), sums,
                          jnp.zeros((k,), dtype), jnp.zeros((k,), dtype),
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def aggregate(leaves, state, **_):
    acc = [l.astype(_numeric.solver_dtype(l.dtype)) for l in leaves]
    sums = [s + jnp.square(g).astype(s.dtype) for s, g in zip(state.sq_grad_sums, acc)]
    risks = excess_risks(acc, sums).astype(state.weights.dtype)
    warming = state.step < n_warmup_steps
    first = state.step == n_warmup_steps
    warmup_mean = state.warmup_sum / max(n_warmup_steps, 1)
    # A task whose baseline is still 0 (its gradient vanished so far) takes its
    # first positive risk instead: dividing by 0 + 1e-7 would shut the others out.
    candidate = jnp.where(first, warmup_mean, risks) if n_warmup_steps else risks
    baseline = jnp.where(~warming & (state.baseline <= 0), candidate, state.baseline)
    stepped, _ = excess_mtl_weighting(state.weights, risks, baseline,
                                      robust_step_size=robust_step_size)
    # Without a warm-up the first update sets Ê₀ = Ê and takes no step (Ê/(Ê + 1e-7)
    # is uniform only while every Ê ≫ 1e-7).
    keep = warming | first if not n_warmup_steps else warming
    weights = jnp.where(keep, state.weights, stepped.astype(state.weights.dtype))
    warmup_sum = jnp.where(warming, state.warmup_sum + risks, state.warmup_sum)
    updates = [linalg.combine_leaf(weights, g, g.dtype) for g in acc]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))
    return updates, state._replace(weights=weights, sq_grad_sums=sums, baseline=baseline,
                                   warmup_sum=warmup_sum, step=state.step + 1), finite

  return aggregator.stacked_gradient_transformation(
      aggregate, init_state, shared=shared, num_tasks=num_tasks, init_needs_params=True,
      needs_jacobian=True)
