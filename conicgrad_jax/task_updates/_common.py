"""Pieces every task-update builder shares: backend defaults, the loss wrapper, the shared split."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from conicgrad_jax._types import PyTree
from conicgrad_jax import aggregator
from conicgrad_jax import validation

STRATEGIES = ("loop", "vmap")


def default_strategy() -> str:
  """``"loop"`` on CPU, ``"vmap"`` on GPU/TPU.

  XLA:CPU runs a Python loop of K VJPs (straight-line code) faster than one
  vmapped VJP at every K measured (``python -m benchmarks perf``, part
  ``task_grads``); accelerators batch the K backward passes.
  """
  return "loop" if jax.default_backend() == "cpu" else "vmap"


def default_unroll() -> bool:
  """Unroll static trip counts into straight-line code on CPU only.

  XLA:CPU runs convolutions inside ``while``/``conditional`` bodies many times
  slower than the same code at the top level (jax issue 12868); on
  accelerators a loop keeps the program small and costs little.
  """
  return jax.default_backend() == "cpu"


def default_canonical_convolutions() -> bool:
  """Rewrite convolutions in branches and loop bodies into canonical order on CPU only.

  XLA:CPU leaves the convolutions of a ``lax.cond`` branch or a
  ``lax.map``/``lax.scan`` body in the order autodiff gave them, off its fast
  path (:mod:`~conicgrad_jax.task_updates.conv_layout`); other backends
  choose their own layouts.
  """
  return jax.default_backend() == "cpu"


def after(x, previous):
  """``x``, made to depend on ``previous`` (x + 0·previous₀) so that XLA computes it afterwards.

  Unrolled task passes chained this way run one after another, so one pass's
  intermediates are live at a time; a chain of ``optimization_barrier``s did
  not do this on XLA:CPU (they are gone from its compiled program, and its
  scheduler ran the passes concurrently). A non-finite ``previous`` makes
  ``x`` non-finite, which the callers' finiteness checks turn into a zero update.
  """
  return x + 0.0 * jnp.sum(jnp.ravel(previous)[:1])   # [:1]: a zero-size leaf adds 0


def check_strategy(strategy: Optional[str]) -> str:
  if strategy is None:
    return default_strategy()
  if strategy not in STRATEGIES:
    raise ValueError(f"`strategy` must be one of {STRATEGIES} or None, got {strategy!r}.")
  return strategy


def check_unroll(unroll: Optional[bool]) -> bool:
  return check_backend_flag("unroll", unroll, default_unroll)


def check_canonical_convolutions(value: Optional[bool]) -> bool:
  return check_backend_flag("canonical_convolutions", value, default_canonical_convolutions)


def check_backend_flag(name: str, value: Optional[bool], default: Callable[[], bool]) -> bool:
  """``value``, or the backend's ``default()`` for ``None``; anything else is an error."""
  if value is None:
    return default()
  if not isinstance(value, bool):
    raise ValueError(f"`{name}` must be True, False or None, got {value!r}.")
  return value


def loss_function(fun: Callable[..., Any], args, kwargs, *, has_aux: bool = False,
                  log_losses: bool = False):
  """``p -> (differentiated losses, (losses, aux))``; with ``log_losses`` the first is log L."""

  def of_params(p):
    out = fun(p, *args, **kwargs)
    losses, aux = out if has_aux else (out, None)
    losses = jnp.asarray(losses)
    if losses.ndim != 1:
      raise ValueError(
          f"The loss function must return a 1-D vector of task losses, got "
          f"shape {losses.shape}.")
    if not log_losses:
      return losses, (losses, aux)
    # log L_k exists for L_k > 0 only; otherwise the factor NaN makes the step's task
    # gradients NaN (∇L_k/L_k would ascend a negative loss), so the method skips the step.
    defined = jnp.where(losses > 0, 1.0, jnp.nan).astype(losses.dtype)
    return jnp.log(losses) * jax.lax.stop_gradient(defined), (losses, aux)

  return of_params


class Split(NamedTuple):
  """Which leaves of a parameter-shaped pytree are shared, and how to take it apart."""
  flags: tuple
  treedef: Any

  @property
  def all_shared(self) -> bool:
    return all(self.flags)

  def shared_tree(self, tree) -> PyTree:
    """The tree with every task-specific leaf replaced by ``None`` (an empty subtree)."""
    leaves = self.treedef.flatten_up_to(tree)
    return jax.tree_util.tree_unflatten(
        self.treedef, [l if f else None for l, f in zip(leaves, self.flags)])

  def shared_tree_of(self, shared_leaves) -> PyTree:
    """The shared leaves (in order) placed in the tree, ``None`` for the others."""
    it = iter(shared_leaves)
    return jax.tree_util.tree_unflatten(
        self.treedef, [next(it) if f else None for f in self.flags])

  def shared_leaves(self, tree) -> list:
    return [l for l, f in zip(self.treedef.flatten_up_to(tree), self.flags) if f]

  def head_leaves(self, tree) -> list:
    return [l for l, f in zip(self.treedef.flatten_up_to(tree), self.flags) if not f]

  def merge(self, shared_leaves, head_leaves) -> PyTree:
    it_s, it_h = iter(shared_leaves), iter(head_leaves)
    return jax.tree_util.tree_unflatten(
        self.treedef, [next(it_s) if f else next(it_h) for f in self.flags])


def split(params, shared: validation.SharedSpec) -> Split:
  treedef = jax.tree_util.tree_structure(params)
  flags = (validation.resolve_shared(shared, params) if shared is not None
           else [True] * treedef.num_leaves)
  return Split(tuple(flags), treedef)


def all_finite(*trees) -> jax.Array:
  leaves = [l for t in trees for l in jax.tree_util.tree_leaves(t)]
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in leaves]))


def zero_unless(finite, tree) -> PyTree:
  return jax.tree_util.tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), tree)


def settle(old_state, new_state, losses, update):
  """The library's skip policy for a whole step: ``(update, method state)``.

  The step is skipped when the method skipped it (its ``nonfinite_steps``
  rose: non-finite shared gradients or losses, or weights it rejects) or
  when a loss or any leaf of the update, heads included, is not finite. A
  skipped step's update is all zeros and the method's state is the old one
  with ``nonfinite_steps`` + 1, as for a method called on its own. On the
  step where a method built without ``num_tasks`` learns K, the old state
  has other shapes and cannot be restored: the new one is kept (the method
  kept its own on a skip) and the step is counted.
  """
  old_count = old_state.nonfinite_steps
  finite = (new_state.nonfinite_steps == old_count) & all_finite(losses, update)
  if validation.same_structure_and_shapes(old_state, new_state):
    kept = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o).astype(jnp.result_type(o)),
                                  new_state, old_state)
  else:
    kept = new_state
  kept = aggregator.with_nonfinite_steps(kept, old_count + (~finite).astype(old_count.dtype))
  return zero_unless(finite, update), kept


def call_method(method, grads, method_state, params, losses):
  """``method.update`` on the shared leaves only, with an error that says how to build it."""
  try:
    return method.update(grads, method_state, params, losses=losses)
  except ValueError as e:
    if "`shared`" not in str(e):
      raise
    raise ValueError(
        "make_task_update hands the method the shared leaves only (it computes "
        "the task-specific leaves' update, Σ_k ∇L_k, itself): construct the "
        "method without `shared` and pass `shared` to make_task_update.") from e


def cast_like(tree, like):
  return jax.tree_util.tree_map(lambda u, p: u.astype(jnp.result_type(p)), tree, like)
