"""Runs a transformation over a sequence of loss vectors in one compiled lax.scan."""

import jax
import jax.numpy as jnp
import numpy as np

G2 = {"w": jnp.array([[1.0, 0.0], [0.0, 1.0]])}


def run_losses(tx, losses_seq, grads=G2, history=False):
  """The state after ``update(grads, state, losses=l)`` for each l in turn.

  ``tx`` must be built with ``num_tasks`` (a scan carry keeps its shapes). With
  ``history`` the states after every step, stacked on a leading axis.
  """
  losses = jnp.asarray(np.asarray(losses_seq, np.float32))

  def body(state, l):
    state = tx.update(grads, state, losses=l)[1]
    return state, (state if history else None)

  @jax.jit
  def run(losses):
    last, states = jax.lax.scan(body, tx.init(None), losses)
    return states if history else last

  return run(losses)


def at(states, i):
  """Step ``i`` of a stacked state history."""
  return jax.tree_util.tree_map(lambda x: x[i], states)
