"""conicgrad on parameters sharded over a 2×4 mesh of simulated CPU devices."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import conicgrad_jax as cg
from conicgrad_jax import conicgrad

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")

K = 5


def _setup():
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
  rng = np.random.default_rng(0)
  shapes = {"dense": (64, 96), "bias": (96,), "conv": (3, 3, 8, 16), "scale": ()}
  specs = {"dense": P(None, "model"), "bias": P("model"), "conv": P(None, None, None, "model"),
           "scale": P()}
  params = {k: jnp.asarray(rng.standard_normal(s), jnp.float32) for k, s in shapes.items()}
  grads = {k: jnp.asarray(rng.standard_normal((K,) + s), jnp.float32) for k, s in shapes.items()}
  grads["dense"] = grads["dense"].at[1:].add(-1.1 * grads["dense"][0])
  p_shard = {k: NamedSharding(mesh, specs[k]) for k in shapes}
  g_shard = {k: NamedSharding(mesh, P(None, *specs[k])) for k in shapes}
  sharded_params = jax.device_put(params, p_shard)
  sharded_grads = jax.device_put(grads, g_shard)
  return mesh, params, grads, sharded_params, sharded_grads, p_shard


def test_sharded_update_equals_single_device_and_keeps_sharding():
  mesh, params, grads, sp, sg, p_shard = _setup()
  tx = conicgrad(0.5, num_tasks=K)
  single, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  step = jax.jit(tx.update, out_shardings=(p_shard, None))
  sharded, state = step(sg, tx.init(sp), sp)
  for name in params:
    np.testing.assert_allclose(np.asarray(sharded[name]), np.asarray(single[name]),
                               atol=1e-5, rtol=1e-5)
  # Without forcing out_shardings, the update comes out sharded like the parameters.
  free, _ = jax.jit(tx.update)(sg, tx.init(sp), sp)
  for name in params:
    assert free[name].sharding.is_equivalent_to(sp[name].sharding, sp[name].ndim), name
  assert float(state.diagnostics.residual) <= 1e-4


# The methods that work on J itself, the ones a reshape of a sharded leaf made gather it;
# every other method under the slow marker.
_JACOBIAN = sorted(n for n, m in cg.methods().items() if m.needs_jacobian)
_METHODS = [pytest.param(n, marks=() if n in _JACOBIAN + ["conicgrad"] else pytest.mark.slow)
            for n in sorted(cg.methods())]


# Every collective that moves data between devices other than an all-reduce.
_MOVING_COLLECTIVES = ("all-gather", "all-to-all", "ragged-all-to-all", "collective-permute",
                       "collective-broadcast", "reduce-scatter", "send", "recv")


@pytest.mark.parametrize("name", _METHODS)
def test_compiled_program_never_gathers_the_stacked_gradients(name):
  mesh, params, grads, sp, sg, p_shard = _setup()
  tx = cg.methods()[name].factory(num_tasks=K)
  losses = jnp.linspace(0.5, 2.0, K)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, losses=losses))
  hlo = update.lower(sg, tx.init(sp), sp).compile().as_text()
  moving = [op for op in _MOVING_COLLECTIVES if f" {op}(" in hlo or f" {op}-start(" in hlo]
  assert not moving, moving
  # The only cross-device traffic is all-reduces of small (K×K Gram) arrays.
  reduce_lines = [l for l in hlo.splitlines() if " all-reduce(" in l]
  if name == "conicgrad":
    assert reduce_lines, "the per-device partial Gram matrices must be all-reduced"
  for line in reduce_lines:
    result_type = line.split(" all-reduce(")[0].split("=", 1)[1]
    for dims in re.findall(r"[fsu]\d+\[([\d,]*)\]", result_type):
      size = int(np.prod([int(d) for d in dims.split(",") if d]))
      assert size <= K * K, line


@pytest.mark.slow
def test_sharded_training_step_with_adam():
  mesh, params, grads, sp, sg, p_shard = _setup()
  opt = optax.chain(conicgrad(0.5, num_tasks=K), optax.adam(1e-2))

  @jax.jit
  def train_step(p, s, g):
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  p1, s1 = train_step(sp, opt.init(sp), sg)
  p_ref, s_ref = jax.jit(train_step)(params, opt.init(params), grads)
  adam, adam_ref = s1[1][0], s_ref[1][0]            # chain: (conicgrad, (adam, ...))
  for name in params:
    assert p1[name].sharding.is_equivalent_to(sp[name].sharding, sp[name].ndim)
    np.testing.assert_allclose(np.asarray(p1[name]), np.asarray(p_ref[name]), atol=1e-5)
    for moment, moment_ref in ((adam.mu, adam_ref.mu), (adam.nu, adam_ref.nu)):
      assert moment[name].sharding.is_equivalent_to(sp[name].sharding, sp[name].ndim), name
      # Float32 rounding of the partial Gram sums differs between the meshes: the
      # moments (0.1·update, 0.001·update²) agree to that rounding.
      np.testing.assert_allclose(np.asarray(moment[name]), np.asarray(moment_ref[name]),
                                 rtol=1e-4, atol=2e-6)


def _sharded_example():
  import os
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
  import sharded_flax
  return sharded_flax


@pytest.mark.slow
def test_flax_sharded_training_step_equals_single_device_and_keeps_sharding():
  ex = _sharded_example()
  mesh = ex.make_mesh(4)                                   # 2 (data) × 4 (model)
  params, opt_state, step = ex.build(mesh, width=64)
  x, y = ex.data(batch=16)
  sx, sy = ex.shard_batch(mesh, x, y)
  one = ex.make_mesh(1, devices=jax.devices()[:1])
  p1, o1, step1 = ex.build(one, width=64)
  kernel = params["layer1"]["kernel"]
  assert kernel.sharding.spec == P(None, "model")
  assert len({s.device for s in kernel.addressable_shards}) == 8
  jstep, jstep1 = jax.jit(step), jax.jit(step1)
  for _ in range(3):
    params, opt_state, losses = jstep(params, opt_state, sx, sy)
    p1, o1, losses1 = jstep1(p1, o1, x, y)
    np.testing.assert_allclose(np.asarray(losses), np.asarray(losses1), rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(p1)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  assert params["layer1"]["kernel"].sharding.is_equivalent_to(kernel.sharding, 2)
  assert params["layer2"]["kernel"].sharding.is_equivalent_to(NamedSharding(mesh, P("model", None)), 2)
  adam_mu = opt_state[1][0].mu
  assert adam_mu["layer1"]["kernel"].sharding.is_equivalent_to(kernel.sharding, 2)


@pytest.mark.slow
def test_flax_sharded_step_memory_per_device_falls_with_the_model_axis():
  ex = _sharded_example()
  sizes = [ex.per_device_memory(m, width=512) for m in (1, 2, 4, 8)]
  totals = [s["argument_bytes"] + s["output_bytes"] + s["temp_bytes"] for s in sizes]
  assert all(b < a for a, b in zip(totals, totals[1:])), totals
  assert totals[-1] < 0.35 * totals[0], totals


@pytest.mark.slow
def test_buffers_of_stacked_gradients_are_sharded_like_the_task_gradients():
  """The accumulator of accumulate_task_grads and the K-stacked buffers of MoCo, DB-MTL and
  ExcessMTL get the parameters' sharding with the task axis replicated at init (as Adam's
  moments keep the parameters'), and keep it through the steps: no device holds all K×m."""
  mesh, params, grads, sp, sg, _ = _setup()
  stacked = jax.tree_util.tree_map(lambda p: NamedSharding(mesh, P(None, *p.sharding.spec)), sp)
  names = sorted(params)   # the buffers' order: the parameters' leaves
  accumulate = cg.accumulate_task_grads(cg.mgda(num_tasks=K), 2, num_tasks=K)
  buffers = {"accumulate_task_grads": list(accumulate.init(sp).mean_task_grads.values())}
  for name in ("moco", "db_mtl"):
    buffers[name] = cg.methods()[name].factory(num_tasks=K).init(sp).buffers
  buffers["excess_mtl"] = cg.excess_mtl(num_tasks=K).init(sp).sq_grad_sums
  for method, leaves in buffers.items():
    for name, leaf in zip(names, leaves):
      assert leaf.sharding.is_equivalent_to(stacked[name], leaf.ndim), (method, name)
  step = jax.jit(accumulate.update)
  state = accumulate.init(sp)
  for _ in range(3):
    _, state = step(sg, state, sp)
    for name, leaf in state.mean_task_grads.items():
      assert leaf.sharding.is_equivalent_to(stacked[name], leaf.ndim), name
