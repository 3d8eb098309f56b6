"""From a Gram-level weighting to an optax transformation of stacked task gradients.

Every Gram-weighting method has the same shape: compute G = J Jᵀ over the
shared leaves, turn G into K weights, contract the task axis with those
weights. This module does the parts they share — validation, the shared /
task-specific split, dtypes, and the non-finite policy — so a method only
supplies ``weigh(gram, state, **extra_args) -> state`` with the new weights in
``state.weights``.

Conventions, for every method built here:

* **Shared leaves** (all leaves by default) receive Σ_k weights_k g_k.
* **Task-specific leaves** (those ``shared`` excludes) receive the plain sum of
  their task gradients, Σ_k g_k (each task's head only sees its own loss, so
  this is that task's gradient). They may be passed already summed, with the
  parameter's shape, when ``params`` is given to ``update``.
* **Dtypes**: G and the weights are computed in at least float32; each update
  leaf has its parameter's dtype (the task-gradient leaf's dtype when
  ``params`` is not given).
* **Non-finite gradients**: if any task-gradient entry is NaN or ±Inf (or the
  method's weights come out non-finite, e.g. from NaN losses) the
  update is all zeros, the method's state is left as it was, and
  ``state.nonfinite_steps`` counts the event. Parameters are never written
  with NaN/Inf by this transformation. (Chained optimisers still move by
  their momentum; wrap the chain in :func:`conicgrad_jax.skip_nonfinite` to freeze them.)
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax._types import PyTree
from conicgrad_jax import _numeric
from conicgrad_jax import linalg
from conicgrad_jax import validation
from conicgrad_jax.solvers import barrier



class Weigh(Protocol):

  def __call__(self, gram: jax.Array, state: Any, **extra_args) -> Any:
    ...


def placeholder_weights(num_tasks: Optional[int], dtype=jnp.float32):
  """Initial weight vector: uniform if K is known, else empty until the first update."""
  if num_tasks is None:
    return jnp.zeros((0,), dtype)
  return jnp.full((num_tasks,), 1.0 / num_tasks, dtype)


def state_dtype(tree: PyTree) -> jnp.dtype:
  """The dtype of a method's state: the solver dtype of ``tree``'s leaves (float32 if none).

  float32 for float32/bfloat16/float16 parameters, float64 for float64 ones, so
  the state keeps what the solver computed under ``jax_enable_x64``.
  """
  leaves = [l for l in jax.tree_util.tree_leaves(tree) if hasattr(l, "dtype")]
  if not leaves:
    return jnp.dtype(jnp.float32)
  return _numeric.solver_dtype(jnp.result_type(*[l.dtype for l in leaves]))


class JacobianTransformation(optax.GradientTransformationExtraArgs):
  """The transformation of a method that needs the task gradients themselves.

  Its update is not Σ_k w_k g_k with weights that G alone determines
  (GradDrop, trimmed mean, MoCo, DB-MTL, ExcessMTL), so it cannot run on a
  factor of G (``make_task_update(mode="gramian")``), on representation
  gradients, or reuse ``state.weights`` as a linear combination
  (``every > 1``). It is an ordinary ``optax.GradientTransformationExtraArgs``
  otherwise.
  """
  __slots__ = ()


InitState = Callable[..., NamedTuple]
"""``init_state(num_tasks, dtype)`` → the method's state (``num_tasks`` may be None).

With ``init_needs_params`` it is ``init_state(num_tasks, dtype, params)``.
The state is a NamedTuple with at least ``weights`` (length K, or 0 while K
is unknown) and ``nonfinite_steps``. When K is only learnt at the first
``update``, the adapter calls ``init_state(K, dtype)`` again and carries
``nonfinite_steps`` over.
"""


# The attribute of a method's update function that holds the `shared` it was built
# with, so that wrappers (cr_mogm, with_diagnostics) can take it over. It lives on the
# function, so it lives exactly as long as the method.
_SHARED_ATTRIBUTE = "_conicgrad_jax_shared"
_UNRECORDED = object()


def record_shared(update: Callable, shared: validation.SharedSpec):
  """Records the ``shared`` a method's ``update`` was built with (see :func:`shared_option`)."""
  setattr(update, _SHARED_ATTRIBUTE, shared)


def _recorded_shared(method):
  return getattr(getattr(method, "update", None), _SHARED_ATTRIBUTE, _UNRECORDED)


def check_method(method, name: str, *, jacobian_allowed: bool = True):
  """Raises ValueError naming ``name`` unless ``method`` looks like a method of this library.

  Checks what can be checked before ``init``: an optax transformation, and
  (with ``jacobian_allowed=False``) one whose update is Σ_k w_k g_k with the
  weights in its state. :func:`check_method_state` checks the state at ``init``.
  """
  validation.check_transformation(name, method,
                                  "a balancing method of this library (e.g. conicgrad())")
  if not jacobian_allowed and isinstance(method, JacobianTransformation):
    raise ValueError(
        f"`{name}` needs the task gradients themselves (its update is not Σ_k w_k g_k "
        "with the weights in its state), so it cannot be wrapped here; use a Gram or "
        "loss weighting.")


def with_nonfinite_steps(state, count):
  """``state`` with ``nonfinite_steps`` set to ``count``, also through a wrapper's ``inner`` state."""
  if "nonfinite_steps" in getattr(state, "_fields", ()):
    return state._replace(nonfinite_steps=count)
  return state._replace(inner=with_nonfinite_steps(state.inner, count))


def check_state_type(state, expected: type):
  """Raises ValueError unless ``state`` is an ``expected`` (the method's own state type)."""
  if type(state) is not expected:
    raise ValueError(
        f"The optimiser state is a {type(state).__name__}, but this method's state is a "
        f"{expected.__name__}: pass the state that this method's own `init` returned "
        "(a state made by another method, or restored without its type, does not fit).")


def check_method_state(state, name: str):
  """Raises ValueError naming ``name`` unless ``state`` has ``weights`` and ``nonfinite_steps``."""
  if not (hasattr(state, "weights") and hasattr(state, "nonfinite_steps")):
    raise ValueError(
        f"`{name}`'s state ({type(state).__name__}) has no `weights`: it must be a balancing "
        "method of this library itself (optionally wrapped by cr_mogm or with_diagnostics), "
        "not an optax.chain or another optimiser; chain optimisers after it.")


def shared_option(method, shared: validation.SharedSpec = None) -> validation.SharedSpec:
  """The ``shared`` a wrapper of ``method`` uses: its own if given, else the method's.

  A method built outside this library counts as built with ``None`` (all leaves).
  :func:`check_shared_agrees` checks at trace time that the two select the same leaves.
  """
  if shared is not None:
    return shared
  own = _recorded_shared(method)
  return None if own is _UNRECORDED else own


def check_shared_agrees(method, name: str, shared: validation.SharedSpec, wrapper: str,
                        task_grads: PyTree):
  """Raises ValueError when ``shared`` selects other leaves of ``task_grads`` than ``method``'s.

  A wrapper that recombined other leaves than the method it wraps would mix
  weighted and summed head gradients without a sign of it.
  """
  own = _recorded_shared(method)
  if own is _UNRECORDED or own is shared:
    return
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(task_grads)[0]]
  theirs = validation.resolve_shared(own, task_grads)
  ours = validation.resolve_shared(shared, task_grads)
  for path, a, b in zip(paths, theirs, ours):
    if a != b:
      raise ValueError(
          f"`shared` of {wrapper} makes leaf {validation.path_str(path)} "
          f"{'shared' if b else 'task-specific'}, but `{name}` was built with a `shared` "
          f"that makes it {'shared' if a else 'task-specific'}: pass the same `shared` to "
          f"both, or leave it out of {wrapper} to use the method's.")


def stacked_gradient_transformation(
    aggregate: Callable[..., tuple[list, Any, jax.Array]],
    init_state: InitState,
    *,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    init_needs_params: bool = False,
    needs_jacobian: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """The shared machinery of every method: validation, heads, dtypes, non-finite policy.

  Args:
    aggregate: ``aggregate(shared_leaves, state, **extra_args) ->
      (shared_updates, new_state, finite)``: the update of each shared leaf
      (task axis contracted), the method's new state, and whether the inputs
      the method looked at were finite.
    init_state: see :data:`InitState`.
    shared, num_tasks: as in :func:`gram_weighting_transformation`.
    init_needs_params: pass ``params`` to ``init_state`` (methods whose state
      holds buffers shaped like the stacked gradients).
    needs_jacobian: the update needs the task gradients themselves, not only
      G; the result is then a :class:`JacobianTransformation`.
  """
  validation.check_shared_spec(shared)
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)

  def strong(state):
    # Weakly-typed leaves (e.g. jnp.full with a Python fill) would change type
    # after the first update and make jit compile a second time. Every leaf is
    # also its own buffer, so that a donated state never donates one twice.
    return jax.tree_util.tree_map(
        lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype, copy=True), state)

  def initial_state(k, params):
    dtype = state_dtype(params)
    if init_needs_params:
      return init_state(k, dtype, params)
    return init_state(k, dtype)

  def init_fn(params):
    return strong(initial_state(num_tasks, params))

  def check_own_state(state, leaves, treedef, stacked, params, k):
    # The state this method would start from for these gradients, as shapes only.
    if params is None:
      params = treedef.unflatten([
          jax.ShapeDtypeStruct(jnp.shape(x)[1:] if s else jnp.shape(x), jnp.result_type(x))
          for x, s in zip(leaves, stacked)])
    expected = jax.eval_shape(lambda p: initial_state(k, p), params)
    check_state_type(state, type(expected))
    if state.weights.shape[0] != k:
      return      # K not learnt yet (placeholder), or another K: reported below
    got, structure = jax.tree_util.tree_flatten_with_path(state)
    if structure != jax.tree_util.tree_structure(expected):
      raise ValueError(f"The optimiser state ({type(state).__name__}) is not laid out as "
                       "this method's: pass the state that this method's own `init` returned.")
    for (path, leaf), want in zip(got, jax.tree_util.tree_leaves(expected)):
      if jnp.shape(leaf) != want.shape:
        raise ValueError(
            f"The optimiser state does not fit this method: state{jax.tree_util.keystr(path)} "
            f"has shape {jnp.shape(leaf)}, but this method's state for these task gradients "
            f"has {want.shape} (a state of another method with the same state type, or one "
            "made for other parameters?).")

  def update_fn(task_grads, state, params=None, **extra_args):
    flags = validation.resolve_shared(shared, task_grads)
    k, stacked = validation.check_task_grads(task_grads, flags, params, num_tasks,
                                             shared_given=shared is not None)
    leaves, treedef = jax.tree_util.tree_flatten(task_grads)
    check_own_state(state, leaves, treedef, stacked, params, k)
    shared_leaves = [leaf for leaf, f in zip(leaves, flags) if f]

    if state.weights.shape[0] == 0:
      dtype = state_dtype(shared_leaves)
      state = strong(init_state(k, dtype)._replace(nonfinite_steps=state.nonfinite_steps))
    elif state.weights.shape[0] != k:
      raise ValueError(
          f"The optimiser state was made for {state.weights.shape[0]} tasks "
          f"but the task gradients have K = {k}.")

    shared_updates, new_state, finite = aggregate(shared_leaves, state, **extra_args)
    for leaf, f in zip(leaves, flags):
      if not f:
        finite &= jnp.all(jnp.isfinite(leaf))

    out_dtypes = ([jnp.result_type(p) for p in jax.tree_util.tree_leaves(params)]
                  if params is not None else [l.dtype for l in leaves])
    shared_iter = iter(shared_updates)
    updates = []
    for leaf, f, is_stacked, dt in zip(leaves, flags, stacked, out_dtypes):
      if f:
        u = next(shared_iter).astype(dt)
      elif is_stacked:
        u = jnp.sum(leaf, axis=0, dtype=_numeric.solver_dtype(leaf.dtype)).astype(dt)
      else:
        u = leaf.astype(dt)
      updates.append(u)
    # Finite inputs can still overflow: a squared-gradient buffer, or an update
    # cast to float16. Such a step is skipped like a non-finite one, so that
    # neither the parameters nor the state ever take an Inf or a NaN.
    finite &= _all_finite(updates + [x for x in jax.tree_util.tree_leaves(new_state)
                                     if jnp.issubdtype(x.dtype, jnp.inexact)])
    updates = [jnp.where(finite, u, jnp.zeros_like(u)) for u in updates]

    # The state keeps its dtypes (a lax.scan carry must not change type).
    kept = jax.tree_util.tree_map(
        lambda new, old: jnp.where(finite, new.astype(old.dtype), old),
        new_state._replace(nonfinite_steps=state.nonfinite_steps), state)
    kept = kept._replace(nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32))
    return jax.tree_util.tree_unflatten(treedef, updates), kept

  record_shared(update_fn, shared)
  if needs_jacobian:
    return JacobianTransformation(init_fn, update_fn)
  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _all_finite(arrays) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in arrays]))


def gram_weighting_transformation(
    weigh: Weigh,
    init_state: InitState,
    *,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    precision=_numeric.HIGHEST,
    needs_gram: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Builds ``GradientTransformationExtraArgs(init, update)`` for a Gram weighting.

  Args:
    weigh: ``weigh(gram, state, **extra_args) -> new_state``; ``gram`` is the
      K×K Gram matrix of the shared leaves (float32 or float64) and
      ``new_state.weights`` the K combination weights.
    init_state: ``init_state(num_tasks, dtype)`` returns the method's initial
      state (see :data:`InitState`).
    shared: which leaves are shared: ``None`` (all), a pytree of bools shaped
      like the parameters, or a predicate ``(key_path, leaf) -> bool``.
    num_tasks: K, if known at construction; it fixes the state's shapes from
      ``init`` on (needed when the state is carried through ``lax.scan``).
      Otherwise the first ``update`` fixes it and ``jax.jit`` traces twice.
    precision: matmul precision of the Gram matrix and the combination.
    needs_gram: ``False`` for weightings that ignore G (``weigh`` then gets
      ``gram=None``), which saves the O(K²m) Gram computation.

  Returns:
    The transformation. ``update(task_grads, state, params=None, **extra)``
    accepts and forwards unknown keyword arguments to ``weigh``.
  """
  validation.check_precision(precision)

  def aggregate(shared_leaves, state, **extra_args):
    k = state.weights.shape[0]
    if needs_gram:
      gram = linalg.gram_matrix(shared_leaves, precision)
      finite = jnp.all(jnp.isfinite(gram))  # NaN/Inf in a shared leaf reach G
      gram = jnp.where(finite, gram, jnp.eye(k, dtype=gram.dtype))
    else:
      gram = None
      finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in shared_leaves]))
    new_state = weigh(gram, state, **extra_args)
    weights = new_state.weights
    finite &= jnp.all(jnp.isfinite(weights))  # e.g. NaN losses given to a loss weighting
    updates = [linalg.combine_leaf(weights, leaf, _numeric.solver_dtype(leaf.dtype), precision)
               for leaf in shared_leaves]  # cast to the parameter dtype once, by the caller
    return updates, new_state, finite

  return stacked_gradient_transformation(aggregate, init_state, shared=shared,
                                         num_tasks=num_tasks)


def loss_weighting_transformation(
    weigh_losses: Callable[[jax.Array, Any], Any],
    init_state: InitState,
    method: str,
    *,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    precision=_numeric.HIGHEST,
    positive_losses: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Builds the transformation of a weighting computed from the task losses alone.

  Args:
    weigh_losses: ``weigh_losses(losses, state) -> new_state``; ``losses`` is
      the (K,) ``losses=`` extra argument of ``update`` (at least float32) and
      ``new_state.weights`` the K combination weights. No Gram matrix is
      computed.
    init_state: ``init_state(num_tasks, dtype)`` (see :data:`InitState`).
    method: the method's name, used in the error raised when ``update`` is
      called without ``losses=`` or with the wrong shape.
    shared, num_tasks, precision: as in :func:`gram_weighting_transformation`.
    positive_losses: every loss must be > 0 (methods that take log l or
      divide by l have no meaning otherwise).

  Returns:
    The transformation; ``update(task_grads, state, params=None, losses=...)``
    ignores other keyword arguments. Non-finite losses, and with
    ``positive_losses`` losses ≤ 0, skip the step like non-finite gradients do (zero update,
    state kept, ``nonfinite_steps`` + 1).
  """
  validation.check_precision(precision)

  def weigh(gram, state, losses=None, **_):
    del gram
    losses = require_losses(losses, state.weights.shape[0], method)
    new_state = weigh_losses(losses, state)
    valid = jnp.all(jnp.isfinite(losses))
    if positive_losses:
      valid &= jnp.all(losses > 0)
    return new_state._replace(weights=jnp.where(valid, new_state.weights, jnp.nan))

  return gram_weighting_transformation(weigh, init_state, shared=shared, num_tasks=num_tasks,
                                       precision=precision, needs_gram=False)


class SolverInfo(NamedTuple):
  """What an iterative weighting reports: the Newton (or fixed-point) steps it took."""
  iterations: jax.Array


def no_solver_info() -> SolverInfo:
  """The ``aux`` of a closed-form weighting."""
  return SolverInfo(jnp.zeros((), jnp.int32))


class GramMethodState(NamedTuple):
  """State of a stateless Gram-weighting method.

  Attributes:
    weights: the K combination weights of the last update.
    info: the weighting's :class:`SolverInfo` of the last update.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  info: SolverInfo
  nonfinite_steps: jax.Array


def stateless_gram_method(
    weighting: Callable[..., tuple[jax.Array, SolverInfo]],
    *,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    precision=_numeric.HIGHEST,
) -> optax.GradientTransformationExtraArgs:
  """A transformation from ``weighting(gram, **extra_args) -> (weights, SolverInfo)``."""

  def init_state(k, dtype):
    return GramMethodState(placeholder_weights(k, dtype), no_solver_info(),
                           jnp.zeros((), jnp.int32))

  def weigh(gram, state, **extra_args):
    weights, info = weighting(gram, **extra_args)
    return state._replace(weights=weights, info=info)

  return gram_weighting_transformation(weigh, init_state, shared=shared, num_tasks=num_tasks,
                                       precision=precision)


class WarmGramMethodState(NamedTuple):
  """State of a Gram-weighting method whose solver starts from its last solution.

  Attributes:
    weights: the K combination weights of the last update.
    info: the weighting's :class:`SolverInfo` of the last update.
    previous: the solver's last solution
      (:class:`~conicgrad_jax.solvers.barrier.PreviousSolution`), the next
      solve's warm start; kept in the state's dtype.
    nonfinite_steps: updates skipped because of NaN/Inf gradients.
  """
  weights: jax.Array
  info: SolverInfo
  previous: barrier.PreviousSolution
  nonfinite_steps: jax.Array


def warm_started_gram_method(
    weighting: Callable[..., tuple[jax.Array, SolverInfo, jax.Array]],
    solution_shape: Callable[[int], tuple[int, ...]],
    *,
    warm_start: bool = True,
    shared: validation.SharedSpec = None,
    num_tasks: Optional[int] = None,
    precision=_numeric.HIGHEST,
) -> optax.GradientTransformationExtraArgs:
  """A transformation from ``weighting(gram, previous, **extra_args) -> (weights, SolverInfo,
  solution)``, which carries ``solution`` to the next update's ``previous``.

  ``previous`` is a :class:`~conicgrad_jax.solvers.barrier.PreviousSolution`
  (``valid`` False before the first update), or ``None`` when ``warm_start``
  is False; ``solution_shape(K)`` is the shape of ``solution``.
  """
  warm_start = validation.check_bool("warm_start", warm_start)

  def init_state(k, dtype):
    return WarmGramMethodState(placeholder_weights(k, dtype), no_solver_info(),
                               barrier.no_previous_solution(solution_shape(k or 0), dtype),
                               jnp.zeros((), jnp.int32))

  def weigh(gram, state, **extra_args):
    weights, info, solution = weighting(gram, state.previous if warm_start else None,
                                        **extra_args)
    previous = barrier.PreviousSolution(solution, jnp.asarray(True))
    return state._replace(weights=weights, info=info, previous=previous)

  return gram_weighting_transformation(weigh, init_state, shared=shared, num_tasks=num_tasks,
                                       precision=precision)


class KeyedState(NamedTuple):
  """State of a random method: the last weights, its PRNG key, the non-finite count."""
  weights: jax.Array
  key: jax.Array
  nonfinite_steps: jax.Array


def keyed_state(seed):
  """``init_state`` of a :class:`KeyedState` seeded with ``seed``."""
  validation.check_integer("seed", seed)

  def init_state(k, dtype=jnp.float32):
    # The key is made here, not at construction: building a method starts no backend.
    return KeyedState(placeholder_weights(k, dtype), jax.random.PRNGKey(seed),
                      jnp.zeros((), jnp.int32))

  return init_state


def require_losses(losses, num_tasks: int, method: str) -> jax.Array:
  """The ``losses=`` extra argument as a (K,) array, or a ValueError naming it."""
  if losses is None:
    raise ValueError(f"{method} needs the task losses: call update(..., losses=<shape (K,)>).")
  losses = jnp.asarray(losses)
  if losses.shape != (num_tasks,):
    raise ValueError(f"{method}: `losses` has shape {losses.shape}; expected ({num_tasks},).")
  return losses.astype(_numeric.solver_dtype(losses.dtype))
