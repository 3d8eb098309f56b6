r"""RotoGrad: per-task rotations of the shared representation plus gradient-magnitude homogenisation.

RotoGrad works on the gradients with respect to the shared representation
z = h(x) ∈ ℝᵈ. Task k sees z_k = R_k z (R_k orthogonal, acting on the first r
coordinates) and o_k = ∂L_k/∂z = R_kᵀ ∂L_k/∂z_k. Two parts:

* **Magnitudes** (:func:`rotograd`, a Gram-level weighting): with norms
  n_k = ‖o_k‖, convergence ratios ρ_k = n_k/n_k⁰ (n⁰ recorded at the first
  step and again after ``burn_in_period`` steps), α = ρ/Σρ and C = Σ_k α_k n_k,
  the shared update is Σ_k (C/n_k) o_k: every task's gradient has norm C,
  tasks that converge slowly weigh more. The weights C/n_k depend only on
  diag(G), so the transformation is a Gram weighting like the others.
* **Rotations** (:func:`rotation_loss`): R_k is trained so that it maps the
  reference v = mean_k (‖ō‖/n_k) o_k (ō = mean_k o_k) onto task k's rotated
  gradient: min_{R_k} mean_b ‖R_k v_b − sg(R_k o_{k,b})‖², with R_k = exp(L_k − L_kᵀ),
  L_k the strictly lower triangle of A_k (the reference's exponential-map
  parametrisation, geotorch's ``orthogonal(triv="expm")``). The task losses see
  R_k through ``stop_gradient``, so only this loss trains the rotations.

Feed :func:`rotograd` the representation gradients (``rep_grads``, shape
(K, B, d)) to follow the paper exactly — :func:`conicgrad_jax.make_task_update`
with ``mode="representation"`` does so and maps the combined z-gradient
through the encoder with one VJP (the reference package's rule over a burn-in:
``test_representation_mode_with_rotograd_follows_the_reference_over_its_burn_in``); its
``representation_loss`` option, given :func:`rotation_loss` of the rotations'
generators, adds the rotations' gradient from the same representation gradients.
Given parameter-level task gradients it homogenises their norms instead (a
documented variant).

References:
  Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask
  Learning", ICLR 2022; the authors' ``rotograd`` package (v0.1.x) for the
  burn-in and the reference vector.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

_EPS = 1e-15
_STEP_MAX = 2**31 - 1   # the step counter is int32


class RotoGradState(NamedTuple):
  """State of :func:`rotograd`.

  Attributes:
    weights: the weights C/n_k of the last update (1 with ``magnitude=False``).
    initial_norms: the reference norms n⁰.
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  initial_norms: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def rotograd_weighting(gram: jax.Array, state: RotoGradState, *, burn_in_period: int = 20,
                       magnitude: bool = True) -> tuple[jax.Array, RotoGradState]:
  r"""The magnitude weights C/n_k from diag(G) and the reference norms in ``state``.

  n_k = √G_kk; n⁰ is re-recorded at steps 0 and ``burn_in_period``;
  ρ = n/n⁰, α = ρ/Σρ, C = Σ_k α_k n_k. With ``magnitude=False`` the weights
  are 1. Returns ``(weights, new_state)``.
  """
  k = state.weights.shape[0]
  dtype = state.weights.dtype
  if not magnitude:
    weights = jnp.ones((k,), dtype)
    return weights, state._replace(weights=weights, step=state.step + 1)
  norms = jnp.maximum(_numeric.gradient_norms(gram), _EPS).astype(dtype)
  reset = (state.step == 0) | (state.step == burn_in_period)
  initial = jnp.where(reset, norms, state.initial_norms)
  ratios = norms / initial
  alphas = ratios / jnp.maximum(jnp.sum(ratios), _EPS)
  weights = jnp.sum(alphas * norms) / norms
  return weights, state._replace(weights=weights, initial_norms=initial, step=state.step + 1)


def rotograd(*, burn_in_period: int = 20, magnitude: bool = True,
             shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""RotoGrad's magnitude homogenisation: every task's gradient rescaled to one common norm.

  With n_k = ‖g_k‖, the convergence ratios ρ_k = n_k/n_k⁰ and α = ρ/Σρ,

  .. math::

     d = \sum_k \frac{C}{n_k}\, g_k, \qquad C = \sum_k \alpha_k n_k,

  so each task contributes a gradient of norm C and tasks that converge
  slowly (large ρ_k) pull C towards their own norm. The weights depend only
  on diag(G). Train the rotations with :func:`rotation_loss` (or the Flax
  module :class:`conicgrad_jax.nn.RotoGradRotations`); see the module
  docstring.

  Args:
    burn_in_period: the step at which the reference norms n⁰ are recorded
      again (they are first recorded at step 0); 20, as the reference.
    magnitude: ``False`` gives the rotation-only variant (plain sum).
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`RotoGradState`. ``update(task_grads, state, params=None)``
    needs no extra arguments and ignores any. Feed it the representation
    gradients (``make_task_update(mode="representation")``) to follow the
    paper.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.rotograd()
    >>> u, s = tx.update({"z": jnp.array([[3.0, 0.0], [0.0, 1.0]])}, tx.init(None))
    >>> [round(float(x), 3) + 0.0 for x in u["z"]]   # both tasks rescaled to norm C = 2
    [2.0, 2.0]

  References:
    Javaloy & Valera, "RotoGrad: Gradient Homogenization in Multitask
    Learning", ICLR 2022; the authors' ``rotograd`` package (v0.1.x).

  Deviations: given parameter-level task gradients instead of
  representation gradients it homogenises their norms (a variant; the
  paper works on the representation).
  """
  validation.check_positive_int("burn_in_period", burn_in_period)
  if not isinstance(burn_in_period, jax.core.Tracer) and int(burn_in_period) > _STEP_MAX:
    raise ValueError(f"`burn_in_period` must be at most {_STEP_MAX} (the step counter is "
                     f"int32), got {burn_in_period}.")
  magnitude = validation.check_bool("magnitude", magnitude)

  def init_state(k, dtype=jnp.float32):
    return RotoGradState(jnp.ones((k or 0,), dtype), jnp.ones((k or 0,), dtype),
                         jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def weigh(gram, state, **_):
    return rotograd_weighting(gram, state, burn_in_period=burn_in_period,
                              magnitude=magnitude)[1]

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)


def rotation_matrices(generators: jax.Array) -> jax.Array:
  """R_k = exp(L_k − L_kᵀ), L_k = tril(A_k, −1), for generators A of shape (K, r, r).

  K orthogonal r×r matrices. Only the strictly lower triangle parametrises R_k, as in
  geotorch's ``triv="expm"``: a full A_k − A_kᵀ would move twice as fast under SGD or Adam.
  """
  lower = jnp.tril(generators, -1)
  skew = lower - jnp.swapaxes(lower, -1, -2)
  return jax.vmap(jax.scipy.linalg.expm)(skew)


def rotate(z: jax.Array, rotation: jax.Array) -> jax.Array:
  """Applies an r×r rotation to the first r features of z (shape (..., d), r ≤ d)."""
  r = rotation.shape[-1]
  head = jnp.einsum("ij,...j->...i", rotation, z[..., :r])
  return jnp.concatenate([head, z[..., r:]], axis=-1) if r < z.shape[-1] else head


def reference_direction(rep_grads: jax.Array) -> jax.Array:
  """v = mean_k (‖ō‖/‖o_k‖) o_k, ō = mean_k o_k (norms over all but the task axis)."""
  axes = tuple(range(1, rep_grads.ndim))
  norms = jnp.sqrt(jnp.sum(rep_grads ** 2, axis=axes, keepdims=True))
  mean_norm = jnp.sqrt(jnp.sum(jnp.mean(rep_grads, axis=0) ** 2))
  return jnp.mean(rep_grads * (mean_norm / jnp.maximum(norms, _EPS)), axis=0)


def rotation_loss(generators: jax.Array, rep_grads: jax.Array) -> jax.Array:
  r"""Σ_k mean_b ‖R_k v_b − sg(R_k o_{k,b})‖² over the first r features; its gradient trains R_k.

  Args:
    generators: (K, r, r) unconstrained parameters of the rotations.
    rep_grads: (K, B, d) gradients o_k of each task loss with respect to the
      shared (unrotated) representation, r ≤ d.
  """
  k, r = generators.shape[0], generators.shape[-1]
  if rep_grads.ndim != 3 or rep_grads.shape[0] != k or rep_grads.shape[-1] < r:
    raise ValueError(
        f"rotation_loss: `rep_grads` must have shape (K={k}, batch, d ≥ {r}); got "
        f"{rep_grads.shape}.")
  rep_grads = jax.lax.stop_gradient(rep_grads)
  rotations = rotation_matrices(generators)
  reference = reference_direction(rep_grads)[..., :r]
  target = jax.lax.stop_gradient(
      jnp.einsum("kij,kbj->kbi", rotations, rep_grads[..., :r]))
  moved = jnp.einsum("kij,bj->kbi", rotations, reference)
  return jnp.sum(jnp.mean(jnp.sum((moved - target) ** 2, axis=-1), axis=-1))
