"""Freezing a whole optimiser chain on a step with non-finite task gradients.

Every transformation of this library already returns a zero update and keeps
its own state when it sees NaN or ±Inf; an optimiser chained after it (Adam)
still moves by its momentum, though. ``optax.apply_if_finite`` cannot wrap
such a chain: it checks the *input* of the chain (here the stacked task
gradients) and, on its reject branch, returns zeros shaped like that input,
while the chain returns updates shaped like the parameters, so its
``lax.cond`` fails to trace. :func:`skip_nonfinite` has optax's semantics with
the parameters' shapes.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import validation



class SkipNonfiniteState(NamedTuple):
  """State of :func:`skip_nonfinite` (the fields of ``optax.ApplyIfFiniteState``).

  Attributes:
    notfinite_count: consecutive non-finite steps up to and including the last one.
    last_finite: whether the last step was finite.
    total_notfinite: non-finite steps since ``init``.
    inner_state: the wrapped chain's state.
  """
  notfinite_count: jax.Array
  last_finite: jax.Array
  total_notfinite: jax.Array
  inner_state: optax.OptState


def _all_finite(tree) -> jax.Array:
  # Python floats count too (e.g. ``losses=[l1, l2]``, whose leaves are floats).
  leaves = [jnp.asarray(x) if isinstance(x, (float, complex)) else x
            for x in jax.tree_util.tree_leaves(tree)]
  checks = [jnp.all(jnp.isfinite(x)) for x in leaves
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.asarray(True)


def skip_nonfinite(inner: optax.GradientTransformation,
                   max_consecutive_errors: Optional[int] = None
                   ) -> optax.GradientTransformationExtraArgs:
  """Skips, as a whole, every step whose task gradients or losses are not finite.

  On a step where any entry of the task gradients, of a floating extra
  argument (``losses=``) or of the chain's updates is NaN or ±Inf, the update
  is zero (shaped like the parameters) and the whole state of ``inner`` —
  the method's state and, e.g., Adam's moments and step count — is left as it
  was, so ``optax.apply_updates`` leaves the parameters unchanged too. The
  state counts consecutive and total non-finite steps, as
  ``optax.apply_if_finite`` does; after more than ``max_consecutive_errors``
  consecutive ones the update is applied anyway, so a run that stays
  non-finite shows it.

  Args:
    inner: the chain to protect, e.g.
      ``optax.chain(conicgrad(0.5, num_tasks=K), optax.adam(1e-3))``.
    max_consecutive_errors: consecutive non-finite steps skipped before the
      update is applied regardless; ``None`` skips them all.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state
    :class:`SkipNonfiniteState`; ``update`` forwards ``params`` and every
    extra argument (e.g. ``losses=``) to ``inner``. The chain runs on every
    step (no ``lax.cond``); a skipped step's results are discarded.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from conicgrad_jax import conicgrad
    >>> tx = skip_nonfinite(optax.chain(conicgrad(0.5, num_tasks=2), optax.adam(0.1)))
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> bad = {"w": jnp.array([[1.0, jnp.nan], [0.0, 1.0]])}
    >>> u, state = tx.update(bad, state, params)
    >>> bool(jnp.all(u["w"] == 0)), int(state.total_notfinite)
    (True, 1)
  """
  validation.check_transformation("inner", inner)
  if max_consecutive_errors is not None:
    max_consecutive_errors = validation.check_non_negative_int("max_consecutive_errors",
                                                               max_consecutive_errors)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return SkipNonfiniteState(jnp.zeros((), jnp.int32), jnp.asarray(True),
                              jnp.zeros((), jnp.int32), inner.init(params))

  def update_fn(task_grads, state, params=None, **extra_args):
    updates, new_inner = inner.update(task_grads, state.inner_state, params, **extra_args)
    finite = _all_finite(task_grads) & _all_finite(extra_args) & _all_finite(updates)
    notfinite_count = jnp.where(finite, 0, optax.safe_int32_increment(state.notfinite_count))
    apply = finite
    if max_consecutive_errors is not None:
      apply = apply | (notfinite_count > max_consecutive_errors)
    updates = jax.tree_util.tree_map(lambda u: jnp.where(apply, u, jnp.zeros_like(u)), updates)
    _check_fixed_shapes(new_inner, state.inner_state)
    new_inner = jax.tree_util.tree_map(
        lambda new, old: jnp.where(apply, new, old), new_inner, state.inner_state)
    return updates, SkipNonfiniteState(
        notfinite_count=notfinite_count,
        last_finite=finite,
        total_notfinite=jnp.where(finite, state.total_notfinite,
                                  optax.safe_int32_increment(state.total_notfinite)),
        inner_state=new_inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_fixed_shapes(new, old):
  """A skipped step keeps the old state, so the chain's state must keep its shapes."""
  if not validation.same_structure_and_shapes(new, old):
    raise ValueError(
        "skip_nonfinite keeps the chain's state on a skipped step, so the state's shapes "
        "must be fixed at init; a method built without `num_tasks` learns K at its first "
        "update: construct it with num_tasks=K.")
