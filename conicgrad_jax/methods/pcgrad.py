"""PCGrad (Yu et al., NeurIPS 2020) in its Gram-matrix form (as torchjd computes it)."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


def pcgrad_weighting(gram: jax.Array, key: jax.Array, *,
                     include_self: bool = False) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""PCGrad weights: w = Σ_i c⁽ⁱ⁾, where c⁽ⁱ⁾ tracks g_i projected against each conflicting g_j.

  For each task i (its order of the tasks drawn from ``key``):
  c = e_i; for j ≠ i (every j with ``include_self``): if (Gc)_j < 0,
  c_j −= (Gc)_j / G_jj. Projections use the original g_j (as the reference).
  Sum reduction; zero-norm g_j are skipped (the reference divides by zero there).

  Args:
    gram: the K×K Gram matrix G = J Jᵀ.
    key: the PRNG key of the visiting orders.
    include_self: whether task i is also projected off its own g_i (see :func:`pcgrad`).

  Returns:
    ``(weights (K,), no_solver_info())``.
  """
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  k = gram.shape[0]
  diag = jnp.diagonal(gram)
  keys = jax.random.split(key, k)

  def one_task(i, key):
    order = jax.random.permutation(key, k)

    def project(c, j):
      dot = jnp.dot(gram[j], c, precision=_numeric.HIGHEST)
      conflict = (dot < 0) & ((j != i) | include_self) & (diag[j] > 0)
      c = c.at[j].add(jnp.where(conflict, -dot / jnp.where(diag[j] > 0, diag[j], 1.0), 0.0))
      return c, None

    c, _ = jax.lax.scan(project, jax.nn.one_hot(i, k, dtype=dtype), order)
    return c

  weights = jnp.sum(jax.vmap(one_task)(jnp.arange(k), keys), axis=0)
  return weights, aggregator.no_solver_info()


def pcgrad(*, seed: int = 0, include_self: bool = False,
           shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Projecting conflicting gradients: project each task gradient off the others it conflicts with, then sum.

  For each task i, in a random order of the other tasks j,

  .. math::

     g_i' \leftarrow g_i' - \frac{\min(\langle g_i', g_j\rangle, 0)}{\|g_j\|^2} g_j,
     \qquad d = \sum_i g_i',

  starting from g_i' = g_i. In Gram form g_i' = Σ_j c_j g_j, so only the
  Gram matrix is needed.

  Args:
    seed: seed of the PRNG key kept in the state; each update splits it and
      draws fresh visiting orders.
    include_self: also project g_i' off its own g_i in its turn, as the
      reference code does (the default leaves task i out, as torchjd).
    shared: which leaves are shared (the Gram matrix and the weighting use
      only these): ``None`` (all), a pytree of bools shaped like the
      parameters, or a predicate ``(key_path, leaf) -> bool``. Other leaves
      (task heads) receive the sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init`` (needed for
      ``lax.scan`` carries); otherwise the first update fixes it.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`~conicgrad_jax.aggregator.KeyedState`. ``update`` needs no extra
    arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> import conicgrad_jax as cg
    >>> tx = cg.pcgrad(seed=0)
    >>> task_grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> updates, _ = tx.update(task_grads, tx.init(None))
    >>> [round(float(x), 2) for x in updates["w"]]
    [0.5, 1.5]

  References:
    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020
    (github.com/tianheyu927/PCGrad).

  Deviations from the reference code: the projections act on the Gram
  matrix's coefficients (torchjd's form) and always use the original g_j, as
  the reference; zero-norm g_j are skipped (the reference divides by zero);
  the update is the sum of the projected gradients, as the reference. As
  torchjd, task i is not projected on its own g_i: the reference code (and
  the Nash-MTL and LibMTL ports) include j = i (``include_self=True``). That
  changes the update whenever a partly projected g_i' has turned against
  g_i, which takes several conflicting projections in a row but happens for
  K < m too (``test_including_the_task_itself_follows_the_reference_code``).
  """
  validation.check_integer("seed", seed)
  include_self = validation.check_bool("include_self", include_self)
  init_state = aggregator.keyed_state(seed)

  def weigh(gram, state, **_):
    key, sub = jax.random.split(state.key)
    weights, _ = pcgrad_weighting(gram, sub, include_self=include_self)
    return state._replace(weights=weights, key=key)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)
