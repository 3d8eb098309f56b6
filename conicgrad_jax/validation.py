"""Eager and trace-time checks of stacked task-gradient pytrees.

Every error names the argument or the leaf (by its key path) at fault, so a
mistake surfaces when the function is traced instead of as a NaN later.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from conicgrad_jax._types import PyTree

SharedSpec = Optional[PyTree | Callable[[tuple, Any], bool]]


def path_str(path) -> str:
  return jax.tree_util.keystr(path) or "<root>"


def _key_name(key):
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return str(key)


def key_names(path) -> tuple:
  """A key path as plain names, so dicts, NNX ``State`` and dataclass modules compare alike."""
  return tuple(_key_name(k) for k in path)


def _short(path, limit=80) -> str:
  s = path_str(path)
  return s if len(s) <= limit else s[:limit - 1] + "…"


def _listed(paths, limit=3) -> str:
  shown = ", ".join(_short(p) for p in paths[:limit])
  return shown + (f" (and {len(paths) - limit} more)" if len(paths) > limit else "")


def same_structure_and_shapes(a, b) -> bool:
  """Whether two pytrees have the same structure and leaf shapes (dtypes aside)."""
  return (jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
          and all(jnp.shape(x) == jnp.shape(y)
                  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))))


def structure_mismatch(tree, reference, name: str, reference_name: str) -> Optional[str]:
  """A short message naming the key paths in which ``tree`` and ``reference`` differ.

  None when their structures are equal. The message names up to three key paths
  of ``reference`` missing from ``tree`` and three extra ones (never a dump of
  the tree definitions), or, when the key paths agree, the container types.
  """
  if jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(reference):
    return None
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  ref_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(reference)[0]]
  names = {key_names(p) for p in paths}
  ref_names = {key_names(p) for p in ref_paths}
  missing = [p for p in ref_paths if key_names(p) not in names]
  extra = [p for p in paths if key_names(p) not in ref_names]
  parts = []
  if missing:
    parts.append(f"missing {len(missing)} key path(s) of {reference_name}: {_listed(missing)}")
  if extra:
    parts.append(f"{len(extra)} extra key path(s): {_listed(extra)}")
  if not parts:
    parts.append(
        f"the key paths agree but the containers differ ({type(tree).__name__} vs "
        f"{type(reference).__name__}); build both the same way")
  return f"{name} does not have the structure of {reference_name}: " + "; ".join(parts) + "."


def check_same_structure(tree, reference, name: str, reference_name: str):
  """Raises ValueError naming the missing and extra key paths when the structures differ."""
  message = structure_mismatch(tree, reference, name, reference_name)
  if message is not None:
    raise ValueError(message)


def is_array(x) -> bool:
  return isinstance(x, (jax.Array, np.ndarray)) or hasattr(x, "aval")


def concrete_float(x) -> Optional[float]:
  """The value of a Python/NumPy/concrete JAX scalar, or None when traced."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return float(x)
  except (TypeError, ValueError, jax.errors.ConcretizationTypeError):
    return None


def check_scalar(name: str, value):
  """Raises ValueError naming ``name`` when ``value`` is an array with more than one entry."""
  if (is_array(value) or isinstance(value, (list, tuple))) and np.ndim(value) != 0:
    raise ValueError(f"`{name}` must be a scalar, got shape {np.shape(value)}.")


def _integer_scalar(value):
  """A 0-d integer array (optax.inject_hyperparams passes those) as a Python int; else ``value``."""
  if is_array(value) and np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype,
                                                               np.integer):
    return int(value)
  return value


def check_integer(name: str, value):
  """Raises ValueError naming ``name`` unless ``value`` is an integer (not a bool)."""
  value = _integer_scalar(value)
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"`{name}` must be an integer, got {value!r}.")


def check_finite(name: str, value):
  """Raises ValueError naming ``name`` unless every entry of a concrete ``value`` is finite.

  Traced values (``optax.inject_hyperparams``) are accepted unchecked.
  """
  if isinstance(value, jax.core.Tracer):
    return
  try:
    finite = np.all(np.isfinite(np.asarray(value, dtype=np.float64)))
  except (TypeError, ValueError):
    raise ValueError(f"`{name}` must be a number or an array of numbers, "
                     f"got {type(value).__name__}.") from None
  if not finite:
    raise ValueError(f"`{name}` must be finite, got {value!r}.")


def _check_real(name: str, value):
  """Raises ValueError naming ``name`` when ``value`` is a bool or complex (traced ones too)."""
  dtype = getattr(value, "dtype", None)
  if isinstance(value, (bool, np.bool_)) or (dtype is not None and np.dtype(dtype) == np.bool_):
    raise ValueError(f"`{name}` must be a number, not a bool, got {value!r}.")
  if isinstance(value, complex) or (dtype is not None
                                    and np.issubdtype(np.dtype(dtype), np.complexfloating)):
    raise ValueError(f"`{name}` must be a real number, got {value!r}.")


def check_floating_leaf(path, leaf, what: str = "Task-gradient leaf"):
  """Raises ValueError naming the leaf unless its dtype is real floating point."""
  dtype = np.dtype(leaf.dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
        f"{what} {path_str(path)} has dtype {dtype}; it must be real floating point "
        "(float16, bfloat16, float32 or float64).")


def check_leading_axis(paths_leaves, k: Optional[int] = None, source: str = "",
                       hint: str = "") -> Optional[int]:
  """K of stacked leaves ``[(path, leaf), ...]``: every leaf needs the same leading task axis.

  ``k`` fixes K beforehand (``source`` says where it comes from, e.g. "`weights`");
  otherwise the first leaf does. ``hint`` ends the error messages.
  """
  for path, leaf in paths_leaves:
    if not is_array(leaf) or jnp.ndim(leaf) == 0:
      raise ValueError(f"Task-gradient leaf {path_str(path)} has no leading task axis "
                       f"(shape {jnp.shape(leaf)}){hint}.")
    if k is None:
      k, source = leaf.shape[0], f"leaf {path_str(path)}"
    elif leaf.shape[0] != k:
      raise ValueError(f"Task-gradient leaf {path_str(path)} has shape {leaf.shape}; {source} "
                       f"has K = {k}: every leaf needs that leading task axis{hint}.")
  return k


def check_unit_interval(name: str, value, *, closed_right: bool = False):
  """Raises ValueError unless 0 ≤ value < 1 (≤ 1 if ``closed_right``)."""
  check_scalar(name, value)
  _check_real(name, value)
  v = concrete_float(value)
  if v is None:
    if not (is_array(value) or isinstance(value, numbers.Number)):
      raise ValueError(f"`{name}` must be a number, got {type(value).__name__}.")
    return
  ok = 0.0 <= v <= 1.0 if closed_right else 0.0 <= v < 1.0
  if not ok:
    interval = "[0, 1]" if closed_right else "[0, 1)"
    raise ValueError(f"`{name}` must lie in {interval}, got {v}.")


def check_preference(preference, num_tasks: Optional[int] = None):
  """Eager check of a preference vector: 1-D, finite, ≥ 0, positive sum, K = ``num_tasks`` entries."""
  if preference is None:
    return
  if np.ndim(preference) != 1 or np.size(preference) == 0:
    raise ValueError(
        f"`preference` must be a non-empty 1-D vector, got shape {np.shape(preference)}.")
  if not isinstance(preference, jax.core.Tracer):
    p = np.asarray(preference, dtype=np.float64)
    if not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
      raise ValueError(
          "`preference` must be finite, non-negative and not all zero, got "
          f"{p.tolist()}.")
  if num_tasks is not None and np.shape(preference) != (num_tasks,):
    raise ValueError(
        f"`preference` has shape {np.shape(preference)} but `num_tasks` is {num_tasks}.")


def check_positive_int(name: str, value, *, allow_none: bool = False):
  """Accepts Python ints and integer arrays (optax.inject_hyperparams passes those)."""
  if value is None and allow_none:
    return
  if isinstance(value, jax.core.Tracer):
    return
  value = _integer_scalar(value)
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _refuse_traced_shape_option(name: str, value):
  if isinstance(value, jax.core.Tracer):
    raise ValueError(f"`{name}` fixes array shapes, so it must be a concrete integer, not a "
                     "traced value (with optax.inject_hyperparams, list it in static_args).")


def check_static_positive_int(name: str, value, *, allow_none: bool = False):
  """:func:`check_positive_int` for an option that fixes array shapes (``num_tasks``):
  a traced value is refused, naming ``name``."""
  _refuse_traced_shape_option(name, value)
  check_positive_int(name, value, allow_none=allow_none)


def check_non_negative_int(name: str, value) -> int:
  """Returns ``value`` as a Python int ≥ 0 (NumPy integers too), or raises ValueError naming ``name``."""
  _refuse_traced_shape_option(name, value)
  value = _integer_scalar(value)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 0:
    raise ValueError(f"`{name}` must be a non-negative integer, got {value!r}.")
  return int(value)


def check_transformation(name: str, value,
                         what: str = "an optax transformation (init and update)"):
  """Raises ValueError naming ``name`` unless ``value`` has callable ``init`` and ``update``."""
  if not (callable(getattr(value, "init", None)) and callable(getattr(value, "update", None))):
    raise ValueError(f"`{name}` must be {what}, got {type(value).__name__}.")


def check_precision(precision):
  """Raises ValueError naming ``precision`` unless JAX's matmuls accept it.

  Checked on abstract values (``jax.eval_shape``): nothing is computed and no
  backend is started (a method may be built before ``jax.distributed.initialize``).
  An algorithm that JAX knows but the backend does not run (TF32 on a CPU) is
  refused when the update is first compiled, by JAX, naming the precision.
  """
  def probe():
    one = jnp.ones((1, 1), jnp.float32)
    return jnp.matmul(one, one, precision=precision)
  try:
    jax.eval_shape(probe)
  except (ValueError, TypeError) as error:
    raise ValueError(
        f"`precision` must be a matmul precision JAX accepts (None, a jax.lax.Precision, "
        f"'highest', 'high', 'default', ...), got {precision!r}.") from error


def check_task_vectors(function: str, first: str, value, *, scalar_ok=(), **others):
  """Raises ValueError unless ``value`` and every array in ``others`` has shape (K,).

  For the scalarised-loss helpers (``famo_loss(losses, logits)``, ...): the
  first argument fixes K, and every other argument given is a vector of K
  entries (``None`` skips one), or a scalar for the names in ``scalar_ok``
  (broadcast to every task). The message names the function, the argument
  and both shapes.
  """
  # np.shape reads a tracer's .shape, and takes lists and tuples (jnp.shape is
  # deprecated for them).
  shape = np.shape(value)
  if len(shape) != 1:
    raise ValueError(f"{function}: `{first}` must be a vector of K entries, one per task; "
                     f"got shape {shape}.")
  for name, other in others.items():
    if other is None:
      continue
    other_shape = np.shape(other)
    scalar = name in scalar_ok
    if other_shape != shape and not (scalar and other_shape == ()):
      expected = f"({shape[0]},) like `{first}`" + (" or a scalar" if scalar else "")
      raise ValueError(f"{function}: `{name}` has shape {other_shape}; expected {expected}.")


def check_bool(name: str, value) -> bool:
  """Returns ``value`` as a Python bool, or raises ValueError naming ``name``."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"`{name}` must be True or False, got {value!r}.")
  return bool(value)


def check_positive(name: str, value, *, allow_zero: bool = False):
  """Raises ValueError naming ``name`` unless ``value`` is a finite number > 0 (≥ 0).

  Traced values (``optax.inject_hyperparams``) are accepted unchecked.
  """
  check_scalar(name, value)
  _check_real(name, value)
  v = concrete_float(value)
  if v is None:
    if not (is_array(value) or isinstance(value, numbers.Number)):
      raise ValueError(f"`{name}` must be a number, got {type(value).__name__}.")
    return
  ok = math.isfinite(v) and (v >= 0.0 if allow_zero else v > 0.0)
  if not ok:
    kind = "non-negative" if allow_zero else "positive"
    raise ValueError(f"`{name}` must be a finite {kind} number, got {value!r}.")


def check_shared_spec(shared: SharedSpec):
  if shared is None or callable(shared):
    return
  leaves = jax.tree_util.tree_leaves(shared)
  bad = [x for x in leaves if not isinstance(x, (bool, np.bool_))]
  if bad:
    raise ValueError(
        "`shared` must be None, a predicate (path, leaf) -> bool, or a pytree "
        f"of Python bools; found a leaf {bad[0]!r}.")
  if not any(bool(x) for x in leaves):
    raise ValueError("`shared` selects no leaf: at least one leaf must be shared.")


def resolve_shared(shared: SharedSpec, task_grads: PyTree) -> list[bool]:
  """Per-leaf shared flags, in ``tree_leaves`` order."""
  paths_leaves = jax.tree_util.tree_flatten_with_path(task_grads)[0]
  if shared is None:
    return [True] * len(paths_leaves)
  if callable(shared):
    flags = [bool(shared(path, leaf)) for path, leaf in paths_leaves]
  else:
    struct = jax.tree_util.tree_structure(task_grads)
    try:
      entries = struct.flatten_up_to(shared)
      # A mask deeper than the gradients (a subtree where they have one array) flattens
      # too; only an entry that is a bool itself belongs to a gradient leaf.
      flags = ([bool(x) for x in entries]
               if all(isinstance(x, (bool, np.bool_)) for x in entries) else None)
    except (ValueError, TypeError):
      flags = None
    if flags is None:
      flags = _flags_by_key_path(shared, paths_leaves)
  if not any(flags):
    raise ValueError(
        "`shared` selects no leaf of the task gradients: at least one leaf "
        "must be shared.")
  return flags


def _flags_by_key_path(shared, paths_leaves) -> list[bool]:
  """Mask flags matched by key-path names, a mask leaf covering every leaf below it.

  So a plain dict mask works for NNX ``State`` gradients (whose leaf paths end
  in ``.value``), and ``{"encoder": True, "heads": False}`` masks whole subtrees.
  """
  mask = [(key_names(p), bool(x), p)
          for p, x in jax.tree_util.tree_flatten_with_path(shared)[0]]
  flags, missing, used = [], [], set()
  for path, _ in paths_leaves:
    names = key_names(path)
    hits = [i for i, (m, _, _) in enumerate(mask) if names[:len(m)] == m]
    if not hits:
      missing.append(path)
      continue
    i = max(hits, key=lambda j: len(mask[j][0]))
    used.add(i)
    flags.append(mask[i][1])
  extra = [p for i, (_, _, p) in enumerate(mask) if i not in used]
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"no entry for {len(missing)} gradient leaf(s): {_listed(missing)}")
    if extra:
      parts.append(f"{len(extra)} entry(ies) matching no leaf: {_listed(extra)}")
    raise ValueError("`shared` does not match the structure of the task gradients: "
                     + "; ".join(parts) + ".")
  return flags


def check_task_grads(task_grads: PyTree, shared_flags: list[bool],
                     params: PyTree = None,
                     num_tasks: Optional[int] = None,
                     shared_given: bool = False) -> tuple[int, list[bool]]:
  """Validates a stacked task-gradient pytree; returns (K, stacked flags).

  Shared leaves must have shape (K, *param_shape). Task-specific leaves may be
  stacked the same way or, when ``params`` is given, already summed over tasks
  (shape ``param_shape``). ``stacked flags`` says which leaves carry a task axis.
  When ``shared_given`` leaves some leaf task-specific, ``params`` is required:
  without the parameters' shapes a summed head whose first dimension happens
  to equal K could not be told from a stacked one.
  """
  paths_leaves, struct = jax.tree_util.tree_flatten_with_path(task_grads)
  if not paths_leaves:
    raise ValueError("`task_grads` has no leaves.")
  if shared_given and params is None and not all(shared_flags):
    head = next(path for (path, _), f in zip(paths_leaves, shared_flags) if not f)
    raise ValueError(
        f"`shared` makes leaf {path_str(head)} task-specific, so update() needs the "
        "parameters to tell a stacked head gradient (K, *shape) from a summed one: "
        "call update(task_grads, state, params).")
  for path, leaf in paths_leaves:
    if not is_array(leaf):
      raise ValueError(
          f"Task-gradient leaf {path_str(path)} is a {type(leaf).__name__}, "
          "not an array; every leaf needs a leading task axis.")
    check_floating_leaf(path, leaf)
  param_leaves = None
  if params is not None:
    message = structure_mismatch(task_grads, params, "`task_grads`", "`params`")
    if message is not None:
      raise ValueError(message)
    param_leaves = jax.tree_util.tree_leaves(params)

  k = num_tasks
  first_path = None
  stacked = []
  for i, (path, leaf) in enumerate(paths_leaves):
    shape = tuple(leaf.shape)
    if param_leaves is not None:
      pshape = tuple(np.shape(param_leaves[i]))
      if shape == pshape and not shared_flags[i]:
        stacked.append(False)
        continue
      if shape[1:] != pshape or len(shape) != len(pshape) + 1:
        summed_shared = shared_flags[i] and shape == pshape
        raise ValueError(
            f"Task-gradient leaf {path_str(path)} has shape {shape}; expected "
            f"(K, *{pshape}) for the parameter of shape {pshape}"
            + ("" if shared_flags[i] else f", or {pshape} already summed")
            + (": it looks summed over the tasks already; if it is task-specific, leave it "
               "out of the shared leaves with `shared=`" if summed_shared else "") + ".")
    if len(shape) == 0:
      raise ValueError(
          f"Task-gradient leaf {path_str(path)} is a scalar; it needs a leading "
          "task axis K.")
    if k is None:
      k, first_path = shape[0], path
    elif shape[0] != k:
      where = (f"leaf {path_str(first_path)} has {k}" if first_path is not None
               else f"the method was built for K = {k} (its `num_tasks`, or the length "
                    "of its `preference` or `weights`)")
      raise ValueError(
          f"Task-gradient leaf {path_str(path)} has task axis of length "
          f"{shape[0]}, but {where}: every leaf needs the same K (a task-specific leaf "
          "whose gradient is already summed over the tasks goes out of the shared leaves "
          "with `shared=`, and update() then needs `params`).")
    stacked.append(True)
  if k is None or k < 1:
    raise ValueError("The task gradients have no task axis (K = 0).")
  return k, stacked
