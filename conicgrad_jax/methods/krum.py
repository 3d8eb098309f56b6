"""Krum and Multi-Krum: the task gradients closest to their neighbours, a robust aggregator."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation

KrumState = aggregator.GramMethodState


def _check_counts(n_byzantine, n_selected):
  validation.check_non_negative_int("n_byzantine", n_byzantine)
  validation.check_positive_int("n_selected", n_selected)


def krum_weighting(gram: jax.Array, n_byzantine: int = 0, n_selected: int = 1, *,
                   squared: bool = False) -> tuple[jax.Array, aggregator.SolverInfo]:
  r"""Multi-Krum weights from the Gram matrix: 1/n_selected on the best-scored rows.

  Distances d_ij = ‖g_i − g_j‖ = (G_ii + G_jj − 2G_ij)^½ (their squares with
  ``squared=True``); the score of row i is the sum of its n = K − f − 2
  smallest distances to the other rows (f = ``n_byzantine``); the
  ``n_selected`` lowest scores get weight 1/n_selected, the others 0. Ties
  go to the lower index.

  Args:
    gram: (K, K) Gram matrix.
    n_byzantine: f, the number of rows that may be adversarial (f ≥ 0).
    n_selected: how many rows are averaged (1: Krum; more: Multi-Krum).
    squared: score with squared distances, as Blanchard et al. do; the
      default, plain distances, is torchjd's score.

  Returns:
    ``(weights, SolverInfo)``; the weights sum to 1.

  Raises:
    ValueError: if ``n_selected`` > K.
  """
  _check_counts(n_byzantine, n_selected)
  squared = validation.check_bool("squared", squared)
  k = gram.shape[0]
  if n_selected > k:
    raise ValueError(f"`n_selected` is {n_selected} but there are only K = {k} task gradients.")
  dtype = _numeric.solver_dtype(gram.dtype)
  gram = gram.astype(dtype)
  sq = jnp.diagonal(gram)
  dist = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
  if not squared:
    dist = jnp.sqrt(dist)
  n_closest = min(max(k - n_byzantine - 2, 0), k - 1)
  # Self-distance is 0 and sorts first; the next n_closest entries are the neighbours.
  nearest = jnp.sort(dist, axis=1)[:, 1:1 + n_closest]
  scores = jnp.sum(nearest, axis=1)
  _, chosen = jax.lax.top_k(-scores, n_selected)      # stable: ties to the lower index
  weights = jnp.sum(jax.nn.one_hot(chosen, k, dtype=dtype), axis=0) / n_selected
  return weights, aggregator.no_solver_info()


def krum(n_byzantine: int = 0, *, n_selected: int = 1, squared: bool = False,
         shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
         precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Krum / Multi-Krum: average the task gradients whose nearest neighbours are closest.

  .. math::
    s_i = \sum_{j \in N_i} \lVert g_i - g_j \rVert, \qquad
    d = \frac{1}{n_{sel}} \sum_{i \in S} g_i,

  N_i the K − f − 2 rows nearest to g_i (f = ``n_byzantine``), S the
  ``n_selected`` rows of lowest score (torchjd's score; Blanchard et al. sum
  the squared distances ‖g_i − g_j‖², ``squared=True``, which can select
  another row). Computed from the Gram matrix alone
  (see :func:`krum_weighting`). A Byzantine-robust aggregator from federated
  learning, not a multi-task method: offered so users can compare against it.

  Args:
    n_byzantine: f, how many task gradients may be adversarial (≥ 0).
    n_selected: how many rows to average (1: Krum, > 1: Multi-Krum).
    squared: score with squared distances, as in the paper (default: plain
      distances, as torchjd).
    shared: which leaves are shared (see :func:`~conicgrad_jax.conicgrad`);
      task-specific leaves receive the plain sum of their task gradients.
    num_tasks: K, to fix the state's shapes at ``init``.
    precision: matmul precision of the Gram matrix and the combination.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is a
    :class:`~conicgrad_jax.aggregator.GramMethodState` (``weights``: the
    selection). ``update`` needs no extra arguments.

  Example:
    >>> import jax.numpy as jnp
    >>> tx = krum(0)
    >>> g = {"w": jnp.array([[1.0, 0.0], [1.1, 0.0], [0.9, 0.1], [-5.0, 9.0]])}
    >>> u, state = tx.update(g, tx.init(None))
    >>> [round(float(x), 2) for x in state.weights]
    [1.0, 0.0, 0.0, 0.0]

  References:
    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017;
    torchjd 0.18 ``Krum``/``KrumWeighting`` (same Gram-matrix form).

  Precision: the distances come from G, whose entries are rounded to about
  eps·‖g_i‖‖g_j‖; a squared distance far below eps·max_i ‖g_i‖² (task gradients
  that share a component much longer than their differences) is then rounding,
  and the choice may be wrong in float32. Compute in float64 (``jax_enable_x64``
  and float64 gradients) there; torchjd's Gram form has the same limit.

  Deviation: torchjd requires K ≥ f + 3; with fewer rows the neighbour count
  is clipped to 0..K − 1 here (so K ≤ f + 2 scores every row 0 and selects
  the first ``n_selected``), which keeps degenerate steps finite.
  """
  _check_counts(n_byzantine, n_selected)
  squared = validation.check_bool("squared", squared)
  validation.check_static_positive_int("num_tasks", num_tasks, allow_none=True)
  if num_tasks is not None and n_selected > num_tasks:
    raise ValueError(f"`n_selected` ({n_selected}) exceeds `num_tasks` ({num_tasks}).")

  def weights_fn(gram, **_):
    return krum_weighting(gram, n_byzantine, n_selected, squared=squared)

  return aggregator.stateless_gram_method(weights_fn, shared=shared, num_tasks=num_tasks,
                                         precision=precision)
