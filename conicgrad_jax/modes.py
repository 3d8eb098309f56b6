"""One helper for every way of computing a multi-task update: stacked, chunked, Gramian-only, representation-level, amortised.

:func:`make_task_update` turns a vector-valued loss and any method of this
library into ``init`` and ``step`` functions. The *mode* picks how the task
gradients are obtained; ``every`` picks how often the weights are recomputed.
Each mode gives the same update as the plain stacked path for the methods it
supports (tested):

=================  =============================================  ==========================
mode               task gradients                                 peak memory / cost
=================  =============================================  ==========================
``"stacked"``      one forward, K backward passes (vmapped VJP)   K×m floats
``"chunked"``      same, ``chunk_size`` tasks at a time           chunk×m floats
``"gramian"``      G column by column by forward-over-reverse     O(m), K JVPs + K+1 VJPs
                   products, then one VJP of Σ w_k L_k
``"representation"`` G from ∂L_k/∂z of the shared representation  K backward passes through
                   z (MGDA-UB), then one VJP through the encoder  the heads, one through
                                                                  the encoder
=================  =============================================  ==========================

``every = N > 1`` (amortised weighting) recomputes the weights on steps
0, N, 2N, … in the chosen mode; the N − 1 steps in between cost one forward
and one backward pass of Σ_k w_k L_k with the last weights (task-specific
leaves still get the gradient of Σ_k L_k: a second cotangent, batched into the
same backward pass). ``step`` picks the branch with ``lax.cond``, so it runs
inside ``jit`` and ``lax.scan``; XLA's CPU backend runs the branches of a
conditional markedly slower than the same code outside one (measured by
``python -m benchmarks perf``), so a Python training loop is faster calling
``step.recompute`` and ``step.reuse`` (same signature, each jitted on its own)
on its own step counter.

"gramian", "representation" and ``every > 1`` need a method whose update is
Σ_k w_k g_k with its weights in ``state.weights``: every Gram weighting and
every loss weighting (``methods()[name].needs_jacobian`` is False). The
Jacobian methods (GradDrop, MoCo, DB-MTL) need ``"stacked"`` or ``"chunked"``.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import task_grads as task_grads_m
from conicgrad_jax import validation

MODES = ("stacked", "chunked", "gramian", "representation")


class TaskUpdateState(NamedTuple):
  """State of :func:`make_task_update`: the method's state, the last weights, the step."""
  method_state: optax.OptState
  weights: jax.Array
  step: jax.Array


def gram_surrogate(gram: jax.Array) -> jax.Array:
  """S (K×K) with S Sᵀ = G (eigen-factor, negative rounding eigenvalues clipped): a Jacobian stand-in."""
  eigenvalues, vectors = jnp.linalg.eigh(0.5 * (gram + gram.T))
  return vectors * jnp.sqrt(jnp.maximum(eigenvalues, 0.0))[None, :]


def weighted_vjp(vjp_fn, weights, losses, flags):
  """Σ_k w_k ∇L_k on shared leaves and Σ_k ∇L_k on the others, from one forward pass."""
  weights = weights.astype(losses.dtype)
  if all(flags):
    return vjp_fn(weights)[0]
  both = jax.vmap(vjp_fn)(jnp.stack([weights, jnp.ones_like(losses)]))[0]
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(both),
      [leaf[0] if f else leaf[1] for leaf, f in zip(jax.tree_util.tree_leaves(both), flags)])


def _stand_in_update(method, stand_in, method_state, losses):
  """The method on a Jacobian stand-in (Gram factor or representation gradients), one shared leaf."""
  try:
    return method.update(stand_in, method_state, losses=losses)
  except ValueError as e:
    if "`shared`" not in str(e):
      raise
    raise ValueError(
        'In mode="gramian" and mode="representation" the method sees a single stand-in '
        "for the Jacobian; construct it without `shared` and pass `shared` to "
        "make_task_update instead.") from e


def make_task_update(
    fun: Callable[..., jax.Array],
    method: optax.GradientTransformation,
    *,
    mode: str = "stacked",
    shared: validation.SharedSpec = None,
    chunk_size: Optional[int] = None,
    every: int = 1,
    encode: Optional[Callable[..., Any]] = None,
    num_tasks: Optional[int] = None,
):
  r"""Builds ``init(params)`` and ``step(params, state, *args) -> (losses, update, state)``.

  Args:
    fun: ``fun(params, *args) -> (K,)`` task losses; with
      ``mode="representation"``, ``fun(params, z, *args)`` computes them from
      the shared representation ``z = encode(params, *args)`` (it must not
      use the encoder's parameters).
    method: a transformation of this library (e.g. ``conicgrad(0.5)``). In
      representation mode it sees the representation gradients, a single
      array: construct it without ``shared``.
    mode: one of ``"stacked"``, ``"chunked"``, ``"gramian"``,
      ``"representation"`` (see the module docstring).
    shared: which parameter leaves are shared (heads get Σ_k ∇L_k).
    chunk_size: tasks per backward batch in ``"chunked"`` mode.
    every: recompute the weights every ``every`` steps (1: every step).
    encode: the shared encoder, for ``mode="representation"``.
    num_tasks: K; required for ``every > 1`` (the weights live in the state).

  Returns:
    ``(init, step)``; ``update`` goes to an ordinary optax optimiser.

  Example:
    >>> import jax.numpy as jnp, conicgrad_jax as cg
    >>> f = lambda p, x: jnp.stack([jnp.sum((p["w"] - x) ** 2), jnp.sum(p["w"] ** 2)])
    >>> init, step = cg.make_task_update(f, cg.conicgrad(0.5), mode="gramian")
    >>> losses, update, state = step({"w": jnp.ones(3)}, init({"w": jnp.ones(3)}), jnp.zeros(3))
    >>> update["w"].shape
    (3,)
  """
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
  validation.check_shared_spec(shared)
  validation.check_positive_int("every", every)
  validation.check_positive_int("chunk_size", chunk_size, allow_none=True)
  validation.check_positive_int("num_tasks", num_tasks, allow_none=True)
  if mode == "chunked" and chunk_size is None:
    raise ValueError('mode="chunked" needs `chunk_size`.')
  if mode == "representation" and encode is None:
    raise ValueError('mode="representation" needs `encode(params, *args) -> z`.')
  if mode != "representation" and encode is not None:
    raise ValueError('`encode` is only used with mode="representation".')
  if every > 1 and num_tasks is None:
    raise ValueError("Amortised weighting (`every` > 1) needs `num_tasks`.")

  def full_losses(params, *args):
    if mode == "representation":
      return jnp.asarray(fun(params, encode(params, *args), *args))
    return jnp.asarray(fun(params, *args))

  def init(params):
    method_state = method.init(params)
    k = num_tasks if num_tasks is not None else 0
    if every > 1 and getattr(method_state, "weights", jnp.zeros(0)).shape != (k,):
      raise ValueError(
          f"Amortised weighting (`every` > 1) carries the method's state through "
          f"lax.cond: construct the method with num_tasks={k} as well.")
    return TaskUpdateState(method_state, jnp.full((k,), 1.0 / max(k, 1), jnp.float32),
                           jnp.zeros((), jnp.int32))

  def exact(params, method_state, *args):
    """losses, update, new method state, weights — in the chosen mode."""
    if mode in ("stacked", "chunked"):
      grads_fn = task_grads_m.value_and_task_grads(
          fun, shared=shared, chunk_size=chunk_size if mode == "chunked" else None)
      losses, grads = grads_fn(params, *args)
      update, method_state = method.update(grads, method_state, params, losses=losses)
      return losses, update, method_state

    if mode == "representation":
      z, encoder_vjp = jax.vjp(lambda p: encode(p, *args), params)
      # One forward through the heads serves both the K representation
      # gradients and the heads' own gradient of Σ_k L_k.
      losses, heads_vjp = jax.vjp(lambda p, zz: jnp.asarray(fun(p, zz, *args)), params, z)
      k = losses.shape[0]
      rep_grads = jax.vmap(lambda e: heads_vjp(e)[1])(jnp.eye(k, dtype=losses.dtype))
      combined, method_state = _stand_in_update(method, rep_grads, method_state, losses)
      encoder_update = encoder_vjp(combined.astype(z.dtype))[0]
      head_update = heads_vjp(jnp.ones_like(losses))[0]
      update = jax.tree_util.tree_map(lambda a, b: (a + b).astype(a.dtype),
                                      encoder_update, head_update)
      return losses, update, method_state

    # Gramian-only: G from forward-over-reverse products, one task at a time;
    # the method weighs a K×K stand-in with the same Gram matrix.
    def weighting(gram, losses):
      new_state = _stand_in_update(method, gram_surrogate(gram), method_state, losses)[1]
      return new_state.weights, new_state

    losses, update, _, method_state = task_grads_m.gramian_core(fun, weighting, shared)(
        params, *args)
    return losses, update, method_state

  def cheap(params, weights, *args):
    flags = task_grads_m.shared_split(params, shared)[0]
    losses, vjp_fn = jax.vjp(lambda p: full_losses(p, *args), params)
    update = weighted_vjp(vjp_fn, weights, losses, flags)
    finite = jnp.all(jnp.isfinite(losses)) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(u)) for u in jax.tree_util.tree_leaves(update)]))
    update = jax.tree_util.tree_map(lambda u: jnp.where(finite, u, jnp.zeros_like(u)), update)
    return losses, update

  def step(params, state, *args):
    if every == 1:
      losses, update, method_state = exact(params, state.method_state, *args)
      return losses, update, state._replace(method_state=method_state, step=state.step + 1)

    return jax.lax.cond(state.step % every == 0, recompute, reuse, params, state, *args)

  def recompute(params, state, *args):
    losses, update, method_state = exact(params, state.method_state, *args)
    weights = method_state.weights.astype(state.weights.dtype)
    return losses, update, TaskUpdateState(method_state, weights, state.step + 1)

  def reuse(params, state, *args):
    losses, update = cheap(params, state.weights, *args)
    return losses, update, state._replace(step=state.step + 1)

  step.recompute, step.reuse = recompute, reuse
  return init, step
