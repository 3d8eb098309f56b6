"""Methods with randomness, their PRNG key in the optax state: PCGrad and GradVac."""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from conicgrad_jax import _numeric
from conicgrad_jax import aggregator
from conicgrad_jax import validation
from conicgrad_jax.weighting import surgery


def pcgrad(*, seed: int = 0, shared: validation.SharedSpec = None,
           num_tasks: Optional[int] = None,
           precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""PCGrad: project each task gradient off the others it conflicts with, then sum.

  Gram-matrix form (torchjd); a random order of the other tasks per task, drawn
  from the key kept in the state. Sum reduction, as the reference.

  References:
    Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020.
  """
  init_state = aggregator.keyed_state(seed)

  def weigh(gram, state, **_):
    key, sub = jax.random.split(state.key)
    return state._replace(weights=surgery.pcgrad_weighting(gram, sub), key=key)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)


class GradVacState(NamedTuple):
  """State of :func:`gradvac`: weights, PRNG key, the EMA cosine targets ρ̂ (K, K)."""
  weights: jax.Array
  key: jax.Array
  targets: jax.Array
  nonfinite_steps: jax.Array


def gradvac(*, beta: float = 0.5, eps: float = 1e-8, seed: int = 0,
            shared: validation.SharedSpec = None, num_tasks: Optional[int] = None,
            precision=_numeric.HIGHEST) -> optax.GradientTransformationExtraArgs:
  r"""Gradient Vaccine: raise each pair's cosine towards an EMA target, then sum.

  Whole-model cosine targets (LibMTL's ``group_type=0``), initialised to 0,
  EMA rate β = 0.5, random visiting order from the key in the state; the
  Gram-matrix form of newer torchjd. Sum reduction.

  References:
    Wang et al., "Gradient Vaccine: Investigating and Improving Multi-task
    Optimization in Massively Multilingual Models", ICLR 2021.
  """
  validation.check_unit_interval("beta", beta, closed_right=True)
  base_key = jax.random.PRNGKey(seed)

  def init_state(k, dtype=jnp.float32):
    kk = k if k is not None else 0
    return GradVacState(aggregator.placeholder_weights(k, dtype), base_key,
                        jnp.zeros((kk, kk), jnp.float32), jnp.zeros((), jnp.int32))


  def weigh(gram, state, **_):
    key, sub = jax.random.split(state.key)
    weights, targets = surgery.gradvac_weighting(gram, state.targets, sub, beta=beta, eps=eps)
    return state._replace(weights=weights, key=key, targets=targets)

  return aggregator.gram_weighting_transformation(
      weigh, init_state, shared=shared, num_tasks=num_tasks, precision=precision)
