"""Methods with randomness, their PRNG key in the optax state: RLW."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation


def _keyed(seed, weigh_with_key, *, shared, num_tasks, precision, needs_gram):
  init_state = aggregator.keyed_state(seed)

  def weigh(gram, state, **_):
    key, sub = jax.random.split(state.key)
    return state._replace(weights=weigh_with_key(gram, sub, state.weights.shape[0]), key=key)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision, needs_gram=needs_gram)


def rlw(*, seed: int = 0, shared: validation.SharedSpec = None,
        num_tasks: Optional[int] = None,
        precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Random loss weighting: w = softmax(z), z ~ N(0, I_K) drawn afresh each step.

  Weights sum to 1 (no ×K), as in the Nash-MTL, LibMTL and torchjd code. No
  Gram matrix is computed.

  References:
    Lin et al., "Reasonable Effectiveness of Random Weighting", TMLR 2022.
  """
  def draw(gram, key, k):
    del gram
    return jax.nn.softmax(jax.random.normal(key, (k,), jnp.float32))

  return _keyed(seed, draw, shared=shared, num_tasks=num_tasks, precision=precision,
                needs_gram=False)
