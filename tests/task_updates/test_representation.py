"""Representation mode's `representation_loss`: its gradient, with the K representation
gradients ∂L_k/∂z as constants, is added to the update on every kind of step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax.methods import rotograd as rotograd_m
from jaxprs import equations

K, D, R = 3, 6, 4     # tasks, representation features, features RotoGrad rotates


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"enc": ((5, D), 1.0), "gen": ((K, R, R), 0.3), "heads": ((K, D), 1.0)}
  params = {name: jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
            for name, (shape, scale) in shapes.items()}
  return params, jnp.asarray(rng.standard_normal((8, 5)), jnp.float32)


def encode(p, x):
  return jnp.tanh(x @ p["enc"])


def heads(p, z, x):
  """Task k's linear head on z (RotoGrad's heads would read R_k z, the rotations held constant:
  the task losses give them no gradient either way)."""
  return jnp.mean((z @ p["heads"].T - x[:, :K]) ** 2, axis=0) + 0.05


def rotation_loss(p, rep_grads, x):
  del x
  return rotograd_m.rotation_loss(p["gen"], rep_grads)


def heads_reading_the_gradients(p, rep_grads, x):
  """Linear in the head weights: its gradient is mean_b ∂L_k/∂z_b, row k for head k."""
  del x
  return jnp.sum(p["heads"] * jnp.mean(rep_grads, axis=1))


def _rep_grads(params, x, log_losses=False):
  """∂L_k/∂z (or ∂ log L_k/∂z) by jax.jacrev of the heads at z = encode(params, x)."""
  z = encode(params, x)
  of_z = (lambda zz: jnp.log(heads(params, zz, x))) if log_losses else (
      lambda zz: heads(params, zz, x))
  return np.asarray(jax.jacrev(of_z)(z), np.float64)


def _close(a, b, **tol):
  assert set(a) == set(b)
  for name in a:
    np.testing.assert_allclose(np.asarray(a[name], np.float64), np.asarray(b[name], np.float64),
                               err_msg=name, **tol)


@pytest.mark.parametrize("log_losses, strategy", [(False, "loop"), (True, "vmap")])
def test_the_loss_gradient_is_added_with_the_representation_gradients_held_constant(
    log_losses, strategy):
  """Head weights times mean_b ∂L_k/∂z: the heads get mean_b ∂L_k/∂z (∂ log L_k/∂z with
  log_losses) on top of the update without the loss, and nothing else changes (the
  gradients enter as constants: no derivative reaches the encoder through them)."""
  params, x = _problem(1)
  options = dict(mode="representation", encode=encode, log_losses=log_losses, strategy=strategy)
  plain = cg.make_task_update(heads, cg.rotograd(num_tasks=K), **options)
  task = cg.make_task_update(heads, cg.rotograd(num_tasks=K), **options,
                             representation_loss=heads_reading_the_gradients)
  _, expected, _ = jax.jit(plain.step)(params, plain.init(params), x)
  _, update, _ = jax.jit(task.step)(params, task.init(params), x)
  rep = _rep_grads(params, x, log_losses)
  assert np.max(np.abs(rep.mean(axis=1))) > 1e-2
  expected = dict(expected, heads=np.asarray(expected["heads"]) + rep.mean(axis=1))
  _close(update, expected, rtol=1e-4, atol=1e-6)


def test_rotograds_rotation_loss_trains_the_rotations_only():
  """The rotations' gradient is the one of RotoGrad's rotation objective at ∂L_k/∂z from
  jax.jacrev; the task losses give the generators no gradient (RotoGrad's read the rotations
  through stop_gradient), so without the loss they get nothing, and the encoder and heads
  get what they get without it."""
  params, x = _problem(2)
  plain = cg.make_task_update(heads, cg.rotograd(num_tasks=K), mode="representation",
                              encode=encode)
  task = cg.make_task_update(heads, cg.rotograd(num_tasks=K), mode="representation",
                             encode=encode, representation_loss=rotation_loss)
  _, expected, _ = jax.jit(plain.step)(params, plain.init(params), x)
  _, update, _ = jax.jit(task.step)(params, task.init(params), x)
  assert np.all(np.asarray(expected["gen"]) == 0)
  rep = jnp.asarray(_rep_grads(params, x), jnp.float32)
  rotations = jax.grad(lambda g: rotograd_m.rotation_loss(g, rep))(params["gen"])
  assert np.max(np.abs(np.asarray(rotations))) > 1e-3
  _close(update, dict(expected, gen=rotations), rtol=1e-4, atol=1e-6)


def test_amortised_steps_add_the_loss_gradient_and_keep_the_weights():
  """every = 2: the fresh step and the reuse step (lax.cond), and the host-scheduled
  `reuse`, are the steps without the loss plus the loss gradient at that step's
  representation gradients; the reuse steps combine them with the stored weights."""
  make_method = lambda: cg.imtl_g(num_tasks=K)
  plain = cg.make_task_update(heads, make_method(), mode="representation", encode=encode,
                              every=2)
  task = cg.make_task_update(heads, make_method(), mode="representation", encode=encode, every=2,
                             representation_loss=heads_reading_the_gradients)
  params, x = _problem(3)
  plain_state, state = plain.init(params), task.init(params)
  plain_step, step, reuse = jax.jit(plain.step), jax.jit(task.step), jax.jit(task.reuse)
  for t in range(2):
    xt = x + 0.5 * t
    _, expected, plain_state = plain_step(params, plain_state, xt)
    _, on_host, _ = reuse(params, state, xt)
    _, update, state = step(params, state, xt)
    heads_grad = np.asarray(expected["heads"]) + _rep_grads(params, xt).mean(axis=1)
    _close(update, dict(expected, heads=heads_grad), rtol=1e-4, atol=1e-6)
    if t == 1:
      _close(on_host, update, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(state.weights), np.asarray(plain_state.weights),
                             rtol=1e-5, atol=1e-7)


def test_a_non_finite_loss_gradient_skips_the_step():
  params, x = _problem(4)
  task = cg.make_task_update(heads, cg.rotograd(num_tasks=K), mode="representation",
                             encode=encode,
                             representation_loss=lambda p, o, x: jnp.sum(p["gen"]) * jnp.nan)
  _, update, state = jax.jit(task.step)(params, task.init(params), x)
  assert int(state.method_state.nonfinite_steps) == 1
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree_util.tree_leaves(update))


def test_representation_loss_errors_name_the_argument():
  params, x = _problem(5)
  flat = lambda p, x: heads(p, encode(p, x), x)
  with pytest.raises(ValueError, match="`representation_loss` is only used with "
                     'mode="representation"'):
    cg.make_task_update(flat, cg.rotograd(), representation_loss=rotation_loss)
  with pytest.raises(ValueError, match="`representation_loss` must be a function"):
    cg.make_task_update(heads, cg.rotograd(), mode="representation", encode=encode,
                        representation_loss=1.0)
  task = cg.make_task_update(heads, cg.rotograd(num_tasks=K), mode="representation",
                             encode=encode, representation_loss=lambda p, o, x: o)
  with pytest.raises(ValueError, match=r"`representation_loss\(params, rep_grads, \*args\)` "
                     r"must return one real number.*shape \(3, 8, 6\)"):
    jax.eval_shape(task.step, params, task.init(params), x)
  # A scalar that is not a real (floating) number is named too, not left to jax.grad.
  task = cg.make_task_update(heads, cg.rotograd(num_tasks=K), mode="representation",
                             encode=encode, representation_loss=lambda p, o, x: jnp.sum(o > 0))
  with pytest.raises(ValueError, match=r"`representation_loss\(params, rep_grads, \*args\)` "
                     r"must return one real number"):
    jax.eval_shape(task.step, params, task.init(params), x)


def _head_passes(step, params, state, x):
  """Matrix products with the heads' weights in the step's jaxpr (branches included): one
  for the forward pass and one per pass back through the heads to z."""
  jaxpr = jax.make_jaxpr(step)(params, state, x).jaxpr
  return sum(any(v.aval.shape in ((K, D), (D, K)) for v in eqn.invars)
             for eqn in equations(jaxpr, "dot_general"))


def test_the_loss_takes_no_pass_through_the_heads_beyond_the_k_the_weights_take():
  """With the loss as without: 1 + K + 1 products (forward, the K representation
  gradients, Σ_k ∇L_k for the heads) on a recompute step, and on an amortised step (whose
  branches then share the K gradients); a host-scheduled reuse step takes the K passes
  instead of its one weighted pass."""
  params, x = _problem(6)
  method = cg.imtl_g(num_tasks=K)
  passes = {}
  for with_loss in (False, True):
    loss = heads_reading_the_gradients if with_loss else None
    for every in (1, 2):
      task = cg.make_task_update(heads, method, mode="representation", encode=encode,
                                 every=every, representation_loss=loss)
      passes[with_loss, every] = _head_passes(task.step, params, task.init(params), x)
    passes[with_loss, "reuse"] = _head_passes(task.reuse, params, task.init(params), x)
  assert passes[False, 1] == passes[True, 1] == 1 + K + 1
  assert passes[False, 2] == 1 + K + 1 + 1 and passes[True, 2] == 1 + K + 1
  assert passes[False, "reuse"] == 1 + 1 + 1 and passes[True, "reuse"] == 1 + K + 1
