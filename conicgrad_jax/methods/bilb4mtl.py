r"""BiLB4MTL (LDC-MTL): loss discrepancy control by a learned router over the task losses."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.methods import _loss_weighting

LOSS_NORMALIZATIONS = ("identity", "rescaled", "log")


class BiLB4MTLState(NamedTuple):
  """State of :func:`bilb4mtl`.

  Attributes:
    weights: the K weights of the last update.
    logits: the router's logits (σ = softmax(logits)).
    inner_state: the state of the router's optimiser.
    initial_losses: the first update's losses (for the loss normalisation).
    step: updates taken.
    nonfinite_steps: updates skipped because of NaN/Inf gradients or losses.
  """
  weights: jax.Array
  logits: jax.Array
  inner_state: optax.OptState
  initial_losses: jax.Array
  step: jax.Array
  nonfinite_steps: jax.Array


def bilb4mtl_loss(losses: jax.Array, logits: jax.Array, initial_losses: jax.Array,
                  lamb: float = 0.05, normalization: str = "identity",
                  weight_bounds: Optional[tuple[float, float]] = None) -> jax.Array:
  r"""σ·l̃/Σσ + λ Σ_{i<K} |σ_i l̃_i − σ_{i+1} l̃_{i+1}|, σ = softmax(logits).

  l̃ is the normalised loss: l (``"identity"``), l/(l⁰/min l⁰)
  (``"rescaled"``) or log(l/l⁰) (``"log"``), l⁰ = ``initial_losses``.
  With ``weight_bounds = (lo, hi)`` σ is clipped to [lo, hi] after the
  softmax (zero gradient outside, as ``torch.clamp``), and Σσ is
  differentiated as in the reference's NYUv2 script (after the softmax alone
  Σσ = 1). |·| has derivative 0 at 0, as ``torch.abs``: at the first step of
  ``"log"`` (l̃ = 0) or ``"rescaled"`` with equal σ_i l̃_i, every penalty term
  sits at that kink.
  """
  validation.check_task_vectors("bilb4mtl_loss", "losses", losses, logits=logits,
                                initial_losses=initial_losses, scalar_ok=("initial_losses",))
  if normalization == "rescaled":
    norm = losses / (initial_losses / jnp.min(initial_losses))
  elif normalization == "log":
    norm = jnp.log(losses / initial_losses)
  else:
    norm = losses
  sigma = jax.nn.softmax(logits)
  if weight_bounds is not None:
    sigma = jnp.clip(sigma, *weight_bounds)
  weighted = sigma * norm
  return (jnp.sum(weighted) / jnp.sum(sigma)
          + lamb * jnp.sum(_numeric.abs_zero_subgradient(weighted[:-1] - weighted[1:])))


def bilb4mtl_weighting(losses: jax.Array, state: BiLB4MTLState,
                       optimizer: optax.GradientTransformation, *, lamb: float = 0.05,
                       normalization: str = "identity",
                       weight_bounds: Optional[tuple[float, float]] = None,
                       ) -> tuple[jax.Array, BiLB4MTLState]:
  r"""One BiLB4MTL step: weights ∂L/∂l, then the router's ``optimizer`` step on ∂L/∂logits.

  L is :func:`bilb4mtl_loss`; the first call records the initial losses.
  Returns ``(weights, new_state)``.
  """
  losses = losses.astype(state.logits.dtype)
  initial = jnp.where(state.step == 0, losses, state.initial_losses)
  weights, grad_logits = jax.grad(bilb4mtl_loss, argnums=(0, 1))(
      losses, state.logits, initial, lamb, normalization, weight_bounds)
  if normalization != "identity":
    # Both divide by l⁰ ("log" also takes log l, which the transformation
    # checks with positive_losses): a first step with a loss ≤ 0 is skipped, so l⁰ > 0.
    weights = jnp.where(jnp.all(initial > 0), weights, jnp.nan)
  updates, inner_state = optimizer.update(_loss_weighting.clip_for_second_moment(grad_logits),
                                          state.inner_state, state.logits)
  return weights, state._replace(weights=weights,
                                 logits=optax.apply_updates(state.logits, updates),
                                 inner_state=inner_state, initial_losses=initial,
                                 step=state.step + 1)


def bilb4mtl(*, lamb: float = 0.05, lr: float = 1e-3, normalization: str = "identity",
             weight_bounds: Optional[tuple[float, float]] = None,
             shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
             precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""BiLB4MTL / LDC-MTL: weighted losses plus a penalty on their discrepancy, router learned.

  With router weights σ = softmax(logits) and normalised losses l̃,

  .. math::

     L = \frac{\sigma^\top \tilde l}{\sum_i \sigma_i}
       + \lambda \sum_{i<K} \big|\sigma_i \tilde l_i - \sigma_{i+1} \tilde l_{i+1}\big|

  is minimised jointly over the model and the logits (the reference's
  first-order bilevel update, one backward pass): the update is
  Σ_i (∂L/∂l_i) g_i and the logits take an Adam step on ∂L/∂logits.

  Args:
    lamb: λ ≥ 0, weight of the discrepancy penalty (0.05, the NYUv2/QM9
      scripts).
    lr: learning rate of the router's Adam optimiser.
    normalization: l̃ from the first update's losses l⁰: ``"identity"``
      (l itself; the reference's Cityscapes script instead penalises the
      unweighted losses, λ|l₁ − l₂|, and does not divide by Σσ),
      ``"rescaled"`` (l/(l⁰/min l⁰), NYUv2) or ``"log"``
      (log(l/l⁰), QM9). The last two need positive initial losses l⁰ (a first
      step with a loss ≤ 0 is skipped, counted in ``nonfinite_steps``, and l⁰
      is taken at the next one), and ``"log"`` needs positive losses at every
      step (other steps are skipped).
    weight_bounds: ``None`` (default, as the reference's CelebA and QM9
      routers) or ``(lo, hi)``: σ clipped to [lo, hi] after the softmax, as
      the reference's NYUv2/Cityscapes router (``(0.2, 0.8)``). Unbounded,
      σ drifts towards the task of smallest normalised loss when the losses
      stay apart (the router minimises the weighted loss), up to
      single-task training; bounds keep every task in.
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``;
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed to carry the
      state through ``lax.scan``); otherwise the first ``update`` fixes it.
    precision: matmul precision of the combination Σ_i w_i g_i.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`BiLB4MTLState`. ``update(task_grads, state, params=None, *,
    losses)`` needs ``losses=`` (shape (K,)) and ignores other keyword
    arguments; non-finite losses skip the step. Users who back-propagate one
    loss can use :func:`bilb4mtl_loss`.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.bilb4mtl(lamb=0.0)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}
    >>> u, state = tx.update(grads, tx.init(None), losses=jnp.array([1.0, 3.0]))
    >>> [round(float(w), 3) + 0.0 for w in state.weights]   # λ = 0: w = σ = 1/K
    [0.5, 0.5]
    >>> bool(state.logits[0] > state.logits[1])   # the router favours the smaller loss
    True

  References:
    "Scalable Bilevel Loss Balancing for Multi-Task Learning" (BiLB4MTL),
    arXiv:2502.08585 (v2 retitled LDC-MTL); code: OptMN-Lab/LDC-MTL.

  Deviations: the router is a vector of free logits with a softmax and its
  own Adam optimiser; the reference's router is a small network on the
  decoder features (softmax, then clamped) trained by the model's optimiser,
  which a transformation that sees only the losses cannot reproduce.
  """
  validation.check_positive("lamb", lamb, allow_zero=True)
  validation.check_positive("lr", lr)
  if weight_bounds is not None:
    try:
      lo, hi = (float(bound) for bound in weight_bounds)
    except (TypeError, ValueError):
      raise ValueError(f"`weight_bounds` must be None or (lo, hi), got {weight_bounds!r}."
                       ) from None
    if not 0.0 <= lo < hi <= 1.0:
      raise ValueError(f"`weight_bounds` must be (lo, hi) with 0 <= lo < hi <= 1, got "
                       f"{weight_bounds!r}.")
  if normalization not in LOSS_NORMALIZATIONS:
    raise ValueError(f"`normalization` must be one of {LOSS_NORMALIZATIONS}, got "
                     f"{normalization!r}.")
  optimizer = optax.adam(lr)

  def init_state(k, dtype=jnp.float32):
    logits = jnp.zeros((k or 0,), dtype)
    return BiLB4MTLState(aggregator.placeholder_weights(k, dtype), logits,
                         optimizer.init(logits), jnp.ones((k or 0,), dtype),
                         jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

  def weigh(losses, state):
    return bilb4mtl_weighting(losses, state, optimizer, lamb=lamb,
                              normalization=normalization, weight_bounds=weight_bounds)[1]

  return aggregator.loss_weighting_transformation(
      weigh, init_state, "bilb4mtl", shared=shared, num_tasks=num_tasks, precision=precision,
      positive_losses=normalization == "log")
