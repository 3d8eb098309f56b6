"""One helper for every way of computing a multi-task update: stacked, chunked, Gramian-only, representation-level, amortised.

:func:`make_task_update` turns a vector-valued loss and a method of this
library into a :class:`TaskUpdate` of functions (``init``, ``step``,
``recompute``, ``reuse``). The *mode* picks how the task gradients are
obtained; ``every`` picks how often the weights are recomputed. One small
builder per mode lives in this package (``stacked``, ``chunked``,
``gramian``, ``representation``, ``amortised``).

=====================  ==============================================  ===========================
mode                   task gradients                                  peak memory / cost
=====================  ==============================================  ===========================
``"stacked"``          one forward, K backward passes                  K×m floats
``"chunked"``          same, ``chunk_size`` tasks at a time            chunk×m floats
``"gramian"``          G column by column (forward-over-reverse        O(m); K JVPs + K+1 VJPs
                       products), then one VJP of Σ w_k L_k
``"representation"``   G_z of ∂L_k/∂z at the shared representation     K backward passes through
                       z (the MGDA-UB approximation: weights from      the heads, one through the
                       G_z, not G; see ``representation``)             encoder
=====================  ==============================================  ===========================

"stacked", "chunked" and "gramian" give the same update
(``test_modes_equal_the_stacked_path``);
"representation" is an approximation of it for Gram methods (it weighs the
representation gradients instead of the parameter gradients).

``every = N > 1`` (amortised weighting) recomputes the weights on steps
0, N, 2N, … in the chosen mode; the N − 1 steps in between cost one forward
pass, one backward pass of Σ_k w_k L_k through the shared leaves and one of
Σ_k L_k through the heads. ``step`` picks the branch with ``lax.cond``, so it
runs inside ``jit`` and ``lax.scan``; ``recompute`` and ``reuse`` (same
signature) are the two branches, for a training loop that keeps its own step
counter. XLA's CPU backend runs the convolutions of a backward pass inside a
conditional's branches or a loop's body many times slower than at the top
level (jax issue 12868), because there it keeps them in the dimension order
autodiff wrote; on CPU the branches and the ``lax.map``/``lax.scan`` bodies
of ``unroll=False`` therefore get their convolutions rewritten into canonical
order (``canonical_convolutions``, :mod:`.conv_layout`), and ``step`` costs
what the host schedule does (``python -m benchmarks perf`` measures both).

"gramian", "representation" and ``every > 1`` need a method whose update is
Σ_k w_k g_k with its weights in ``state.weights``: every Gram weighting and
every loss weighting (``methods()[name].needs_jacobian`` is False). The
Jacobian methods (GradDrop, trimmed mean, MoCo, DB-MTL, ExcessMTL: their
transformations are :class:`~conicgrad_jax.aggregator.JacobianTransformation`)
need ``"stacked"`` or ``"chunked"`` with ``every=1``; other choices raise,
also for a Jacobian method wrapped by :func:`~conicgrad_jax.with_diagnostics`.

A step is skipped as the method on its own skips one, in every mode and on
reuse steps: when the method rejects it (its ``nonfinite_steps`` rises:
non-finite shared gradients or losses, or losses outside its domain), or a
loss or any leaf of the update, task-specific leaves included, is not
finite, the whole update is zero and the method's state is the old one with
``nonfinite_steps`` + 1 (``test_a_step_the_method_rejects_moves_nothing``,
``test_a_nonfinite_head_gradient_skips_the_step_and_keeps_the_method_state``,
``test_a_reuse_step_with_a_nonfinite_head_gradient_is_counted``). On the
first step of a method built without ``num_tasks``, which learns K there, the
old state has other shapes: that step is counted and its update is zero, but
the state is the new one; build the method with ``num_tasks`` for the rule to
hold from the first step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.task_updates import _common
from conicgrad_jax.task_updates import amortised
from conicgrad_jax.task_updates import chunked
from conicgrad_jax.task_updates import conv_layout
from conicgrad_jax.task_updates import gramian
from conicgrad_jax.task_updates import representation
from conicgrad_jax.task_updates import stacked
from conicgrad_jax.task_updates._common import STRATEGIES
from conicgrad_jax.task_updates._common import default_strategy
from conicgrad_jax.task_updates._common import default_unroll
from conicgrad_jax.task_updates.gramian import gramian_value_and_update
from conicgrad_jax.task_updates.stacked import value_and_task_grads

MODES = ("stacked", "chunked", "gramian", "representation")

__all__ = ["MODES", "STRATEGIES", "TaskUpdate", "TaskUpdateState", "default_strategy",
           "default_unroll", "gramian_value_and_update", "make_task_update",
           "value_and_task_grads"]


class TaskUpdateState(NamedTuple):
  """State of :func:`make_task_update`.

  Attributes:
    method_state: the method's own state.
    weights: the K combination weights of the last recomputation (the
      method's ``state.weights``; the weights a reuse step applies). Shape
      (K,) from ``init`` on when the method knows K (``num_tasks``),
      otherwise (0,) until the first step.
    step: the number of steps taken.
  """
  method_state: optax.OptState
  weights: jax.Array
  step: jax.Array


class TaskUpdate(NamedTuple):
  """The functions :func:`make_task_update` returns.

  Attributes:
    init: ``init(params) -> TaskUpdateState``.
    step: ``step(params, state, *args) -> (losses, update, state)``; with
      ``every > 1`` it recomputes or reuses the weights by ``lax.cond`` on
      ``state.step``.
    recompute: the same signature; always recomputes the weights.
    reuse: the same signature; always applies ``state.weights``.
  """
  init: Callable[..., TaskUpdateState]
  step: Callable[..., Any]
  recompute: Callable[..., Any]
  reuse: Callable[..., Any]


def make_task_update(
    fun: Callable[..., jax.Array],
    method: optax.GradientTransformation,
    *,
    mode: str = "stacked",
    shared: validation.SharedSpec = None,
    chunk_size: Optional[int] = None,
    every: int = 1,
    encode: Optional[Callable[..., Any]] = None,
    strategy: Optional[str] = None,
    unroll: Optional[bool] = None,
    canonical_convolutions: Optional[bool] = None,
    log_losses: bool = False,
    num_tasks: Optional[int] = None,
    representation_loss: Optional[Callable[..., Any]] = None,
) -> TaskUpdate:
  r"""Builds the ``init``/``step`` functions of a multi-task update in the chosen mode.

  ``shared`` is said here, once, for every mode: the method is built without
  it and sees the shared leaves only (the task gradients in "stacked" and
  "chunked", a K×K factor of G in "gramian", the representation gradients in
  "representation"); this helper gives the task-specific leaves Σ_k ∇L_k
  itself. K is said once too, to the method (``num_tasks=K``): the helper
  reads it from the method's state.

  Args:
    fun: ``fun(params, *args) -> (K,)`` task losses; with
      ``mode="representation"``, ``fun(params, z, *args)`` computes them from
      the shared representation ``z = encode(params, *args)`` (it must not
      use the encoder's parameters).
    method: a transformation of this library (e.g. ``conicgrad(0.5)``),
      constructed without ``shared``.
    mode: one of ``"stacked"``, ``"chunked"``, ``"gramian"``,
      ``"representation"`` (see the module docstring).
    shared: which parameter leaves are shared (the others get Σ_k ∇L_k):
      ``None`` (all), a pytree of bools like the parameters, or a predicate
      ``(key_path, leaf) -> bool``. Not used in representation mode, where
      ``encode`` and ``fun`` split the parameters.
    chunk_size: tasks per backward batch in ``"chunked"`` mode.
    every: recompute the weights every ``every`` steps (1: every step);
      ``every > 1`` needs the method built with ``num_tasks``.
    encode: the shared encoder, for ``mode="representation"``.
    strategy: how the K backward passes run: ``"loop"`` (K VJP calls) or
      ``"vmap"``; ``None``: ``"loop"`` on CPU, ``"vmap"`` on GPU/TPU. Not
      used by ``"gramian"`` (it raises there).
    unroll: run chunks ("chunked") and Gram columns ("gramian") as
      straight-line code (``True``) or in ``lax.map``/``lax.scan``
      (``False``); ``None``: unrolled on CPU, looped on GPU/TPU.
    canonical_convolutions: rewrite the convolutions of ``step``'s
      ``lax.cond`` branches (``every > 1``) and of the ``lax.map``/``lax.scan``
      bodies (``unroll=False``) into XLA's canonical dimension order
      (:mod:`~conicgrad_jax.task_updates.conv_layout`), which XLA:CPU does
      at the top level of a program only; ``None``: on CPU only.
    log_losses: differentiate log L_k instead of L_k, so every Gram method
      weighs ∇ log L_k = ∇L_k / L_k (the log-MGDA / log-CAGrad / log-IMTL
      variants of Liu et al.'s FAMO code); the heads get Σ_k ∇ log L_k. The
      losses returned (and passed to the method as ``losses=``) are L_k. A
      loss ≤ 0 has no logarithm: all task gradients of that step are NaN,
      and the method skips the step.
    num_tasks: optional K; it must agree with the method's (a check only).
    representation_loss: with ``mode="representation"``, an optional
      ``representation_loss(params, rep_grads, *args) -> scalar`` of the K
      representation gradients ``rep_grads`` (shape (K, *z.shape): ∂L_k/∂z,
      or ∂ log L_k/∂z with ``log_losses``), which enter as constants; its
      gradient with respect to the parameters is added to the update at
      every step (a non-finite one skips the step, as a non-finite task
      gradient does). RotoGrad's rotation objective is one (wrap
      :meth:`conicgrad_jax.nn.RotoGradRotations.loss` or
      :func:`conicgrad_jax.rotograd_rotation_loss` in that signature): it
      then reuses the K passes through the heads that the method's weights
      already take (on amortised reuse steps the K passes replace the one
      weighted pass).

  Returns:
    A :class:`TaskUpdate` ``(init, step, recompute, reuse)``; ``step``
    returns ``(losses, update, state)`` and ``update`` goes to an ordinary
    optax optimiser.

  Example:
    >>> import jax.numpy as jnp, conicgrad_jax as cg
    >>> f = lambda p, x: jnp.stack([jnp.sum((p["w"] - x) ** 2), jnp.sum(p["w"] ** 2)])
    >>> task = cg.make_task_update(f, cg.conicgrad(0.5, num_tasks=2), mode="gramian")
    >>> params = {"w": jnp.ones(3)}
    >>> losses, update, state = task.step(params, task.init(params), jnp.zeros(3))
    >>> update["w"].shape, state.weights.shape
    ((3,), (2,))
  """
  if mode not in MODES:
    raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
  validation.check_shared_spec(shared)
  validation.check_positive_int("every", every)
  validation.check_positive_int("chunk_size", chunk_size, allow_none=True)
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)
  log_losses = validation.check_bool("log_losses", log_losses)
  if mode == "gramian" and strategy is not None:
    raise ValueError('`strategy` is not used with mode="gramian", which computes G '
                     "column by column (`unroll` picks how those columns run).")
  strategy = _common.check_strategy(strategy)
  unroll = _common.check_unroll(unroll)
  canonical = _common.check_canonical_convolutions(canonical_convolutions)
  in_branch = lambda branch: conv_layout.canonical_convolutions_if(canonical, branch)
  if mode == "chunked" and chunk_size is None:
    raise ValueError('mode="chunked" needs `chunk_size`.')
  if mode != "chunked" and chunk_size is not None:
    raise ValueError('`chunk_size` is only used with mode="chunked".')
  if mode == "representation" and encode is None:
    raise ValueError('mode="representation" needs `encode(params, *args) -> z`.')
  if mode != "representation" and encode is not None:
    raise ValueError('`encode` is only used with mode="representation".')
  if representation_loss is not None and mode != "representation":
    raise ValueError('`representation_loss` is only used with mode="representation"; got '
                     f"mode={mode!r}.")
  if representation_loss is not None and not callable(representation_loss):
    raise ValueError("`representation_loss` must be a function (params, rep_grads, *args) "
                     f"-> scalar; got {type(representation_loss).__name__}.")
  if mode == "representation" and shared is not None:
    raise ValueError('mode="representation" splits the parameters by `encode` and `fun`; '
                     "leave `shared` unset.")

  aggregator.check_method(method, "method")
  if isinstance(method, aggregator.JacobianTransformation) and (
      mode in ("gramian", "representation") or every > 1):
    raise ValueError(
        "This method needs the task gradients themselves (its update is not "
        "Σ_k w_k g_k with weights from G alone), so it needs mode=\"stacked\" or "
        f"\"chunked\" with every=1; got mode={mode!r}, every={every}.")

  if mode == "stacked":
    exact = stacked.build(fun, method, shared=shared, strategy=strategy,
                          log_losses=log_losses)
  elif mode == "chunked":
    exact = chunked.build(fun, method, shared=shared, strategy=strategy, unroll=unroll,
                          chunk_size=chunk_size, log_losses=log_losses,
                          canonical_convolutions=canonical)
  elif mode == "gramian":
    exact = gramian.build(fun, method, shared=shared, unroll=unroll, log_losses=log_losses,
                          canonical_convolutions=canonical)
  else:
    exact = representation.build(fun, encode, method, strategy=strategy,
                                 representation_loss=representation_loss,
                                 log_losses=log_losses)
  if mode == "representation":
    cheap = representation.build_reuse(fun, encode, strategy=strategy, log_losses=log_losses,
                                       representation_loss=representation_loss)
  else:
    cheap = amortised.build_reuse(fun, shared=shared, log_losses=log_losses)

  def init(params):
    if mode == "representation" or shared is None:
      method_state = method.init(params)
    else:
      method_state = method.init(_common.split(params, shared).shared_tree(params))
    aggregator.check_method_state(method_state, "method")
    k = method_state.weights.shape[0]
    if num_tasks is not None and k not in (0, num_tasks):
      raise ValueError(f"`num_tasks` is {num_tasks} but the method was built for K = {k}.")
    if every > 1 and k == 0:
      raise ValueError(
          "Amortised weighting (`every` > 1) carries the method's state through lax.cond, "
          f"so its shapes must be fixed at init: construct the method with "
          f"num_tasks={num_tasks if num_tasks is not None else 'K'}.")
    return TaskUpdateState(method_state, method_state.weights, jnp.zeros((), jnp.int32))

  def check_k(losses):
    if num_tasks is not None and losses.shape[0] != num_tasks:
      raise ValueError(f"`num_tasks` is {num_tasks} but `fun` returned "
                       f"{losses.shape[0]} task losses.")

  def recompute(params, state, *args):
    losses, update, method_state = exact(params, state.method_state, *args)
    check_k(losses)
    update, method_state = _common.settle(state.method_state, method_state, losses, update)
    return losses, update, TaskUpdateState(method_state, method_state.weights, state.step + 1)

  def reuse(params, state, *args):
    losses, update = cheap(params, state.weights, *args)
    check_k(losses)
    update, method_state = _common.settle(state.method_state, state.method_state, losses,
                                          update)
    return losses, update, state._replace(method_state=method_state, step=state.step + 1)

  def step(params, state, *args):
    if every == 1:
      return recompute(params, state, *args)
    if mode == "representation":
      return _representation_step(params, state, *args)
    return jax.lax.cond(state.step % every == 0, in_branch(recompute), in_branch(reuse),
                        params, state, *args)

  def _representation_step(params, state, *args):
    # Encoder passes outside the conditional; only the heads' work is branched.
    losses, diff, z, encoder_vjp, heads_vjp = representation.forward(
        fun, encode, params, args, log_losses)
    # A representation loss needs the K representation gradients at every step.
    rep_grads = (representation.gradients(heads_vjp, diff, strategy)
                 if representation_loss is not None else None)

    def fresh(method_state, weights):
      grads = (rep_grads if rep_grads is not None
               else representation.gradients(heads_vjp, diff, strategy))
      combined, method_state = _common.call_method(method, grads, method_state, None, losses)
      return combined.astype(z.dtype), method_state, method_state.weights

    def last(method_state, weights):
      rep = representation.weighted(weights, heads_vjp, diff, rep_grads)
      return rep.astype(z.dtype), method_state, weights

    combined, method_state, weights = jax.lax.cond(
        state.step % every == 0, in_branch(fresh), in_branch(last), state.method_state,
        state.weights)
    check_k(losses)
    update = representation.combine(encoder_vjp, heads_vjp, z, combined, diff, params)
    update = representation.with_representation_loss(update, representation_loss, params,
                                                     rep_grads, args)
    update, method_state = _common.settle(state.method_state, method_state, losses, update)
    # A skipped step keeps the weights a later reuse step applies.
    weights = jnp.where(method_state.nonfinite_steps == state.method_state.nonfinite_steps,
                        weights.astype(state.weights.dtype), state.weights)
    return losses, update, TaskUpdateState(method_state, weights, state.step + 1)

  return TaskUpdate(init, step, recompute, reuse)
