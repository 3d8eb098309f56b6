"""canonical_convolutions: same values, canonical dimension numbers everywhere, and the amortised step built on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import conicgrad_jax as cg
from conicgrad_jax.task_updates.conv_layout import canonical_convolutions
from jaxprs import equations, sub_jaxprs

# (lhs, rhs, out) layouts, image shape (batch first as the layout says), kernel shape,
# strides, padding, feature groups.
CONVS = {
    "nhwc_hwio_stride2": (("NHWC", "HWIO", "NHWC"), (3, 9, 9, 4), (3, 3, 4, 6), (2, 2),
                          "SAME", 1),
    "nchw_oihw_valid": (("NCHW", "OIHW", "NCHW"), (2, 4, 8, 7), (6, 4, 3, 2), (1, 1),
                        "VALID", 1),
    "nwc_1d_grouped": (("NWC", "WIO", "NWC"), (2, 11, 4), (3, 2, 6), (1,), "SAME", 2),
    "ndhwc_3d": (("NDHWC", "DHWIO", "NDHWC"), (2, 5, 6, 4, 3), (2, 3, 2, 3, 4),
                 (1, 2, 1), "SAME", 1),
}


def _net(name):
  layout, x_shape, w_shape, strides, padding, groups = CONVS[name]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
  w = jnp.asarray(rng.standard_normal(w_shape), jnp.float32)

  def loss(w, x):
    y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=layout,
                                 feature_group_count=groups)
    return jnp.sum(jnp.tanh(y) ** 2)

  # Gradients in both arguments: the kernel and input gradients are the permuted
  # (batch-grouped and feature-grouped) convolutions autodiff writes.
  return jax.grad(loss, argnums=(0, 1)), (w, x)


def _is_canonical(dn):
  n = len(dn.lhs_spec) - 2
  order = (0, n + 1, *range(1, n + 1))
  return (tuple(dn.lhs_spec) == order and tuple(dn.out_spec) == order
          and tuple(dn.rhs_spec) == (n + 1, n, *range(n)))


def _convolutions(jaxpr):
  """The dimension numbers of every convolution in a jaxpr, nested ones included."""
  return [eqn.params["dimension_numbers"] for eqn in equations(jaxpr, "conv_general_dilated")]


def _nested_convolutions(eqn):
  """The convolutions in the bodies (sub-jaxprs) of one equation."""
  return [dn for sub in sub_jaxprs(eqn) for dn in _convolutions(sub)]


def _convolutions_in(jaxpr, primitive):
  """The convolutions inside the bodies of every top-level ``primitive`` equation."""
  return [dn for eqn in jaxpr.eqns if eqn.primitive.name == primitive
          for dn in _nested_convolutions(eqn)]


@pytest.mark.parametrize("name", sorted(CONVS))
def test_rewritten_gradients_equal_the_original_and_are_canonical(name):
  grad, args = _net(name)
  rewritten = canonical_convolutions(grad)
  expected = jax.jit(grad)(*args)
  got = jax.jit(rewritten)(*args)
  for a, b in zip(got, expected):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
  before = _convolutions(jax.make_jaxpr(grad)(*args).jaxpr)
  after = _convolutions(jax.make_jaxpr(rewritten)(*args).jaxpr)
  assert len(after) == len(before) == 3
  assert not all(_is_canonical(dn) for dn in before)
  assert all(_is_canonical(dn) for dn in after)


def test_nested_jit_is_rewritten_and_other_primitives_are_kept():
  grad, args = _net("nhwc_hwio_stride2")
  nested = lambda w, x: jax.jit(grad)(w, x)
  jaxpr = jax.make_jaxpr(canonical_convolutions(nested))(*args).jaxpr
  assert all(_is_canonical(dn) for dn in _convolutions(jaxpr))
  for a, b in zip(jax.jit(canonical_convolutions(nested))(*args), jax.jit(grad)(*args)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))
  # A nested jit with an output sharding is kept whole, so its sharding survives.
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  pinned = lambda w, x: jax.jit(grad, out_shardings=sharding)(w, x)
  eqns = jax.make_jaxpr(canonical_convolutions(pinned))(*args).jaxpr.eqns
  assert [e.primitive.name for e in eqns] in (["jit"], ["pjit"])
  assert eqns[0].params["out_shardings"] == (sharding, sharding)
  # A loop inside the function stays a loop (with its body as it was).
  looped = lambda x: lax.while_loop(lambda c: c[0] < 3,
                                     lambda c: (c[0] + 1, jnp.sin(c[1]) + c[0]), (0, x))[1]
  jaxpr = jax.make_jaxpr(canonical_convolutions(looped))(jnp.ones(4)).jaxpr
  assert [e.primitive.name for e in jaxpr.eqns].count("while") == 1
  np.testing.assert_allclose(canonical_convolutions(looped)(jnp.ones(4)),
                             looped(jnp.ones(4)), rtol=1e-6)


def _nested_jit_options(kind):
  """jax.jit options for a nested call on (w, x) -> (kernel gradient, 2x): nothing, or one
  sharding or one layout on the second argument or output only."""
  from jax.experimental.layout import Format, Layout
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return {"plain": {},
          "input_sharding": {"in_shardings": (None, sharding)},
          "output_sharding": {"out_shardings": (None, sharding)},
          "input_layout": {"in_shardings": (None, Format(Layout.AUTO))},
          "output_layout": {"out_shardings": (None, Format(Layout.AUTO))}}[kind]


@pytest.mark.parametrize("kind, inlined", [
    ("plain", True), ("input_sharding", False), ("output_sharding", False),
    ("input_layout", False), ("output_layout", False)])
def test_only_a_nested_jit_without_shardings_or_layouts_is_inlined(kind, inlined):
  """One sharding or layout among several arguments/outputs is enough to keep the call whole."""
  from conicgrad_jax.task_updates.conv_layout import _inlinable
  grad, args = _net("nhwc_hwio_stride2")
  inner = lambda w, x: (grad(w, x)[0], 2 * x)
  nested = lambda w, x: jax.jit(inner, **_nested_jit_options(kind))(w, x)
  eqns = jax.make_jaxpr(nested)(*args).jaxpr.eqns
  assert [e.primitive.name for e in eqns] in (["jit"], ["pjit"])
  assert _inlinable(eqns[0].params) is inlined
  rewritten = canonical_convolutions(nested)
  jaxpr = jax.make_jaxpr(rewritten)(*args).jaxpr
  names = [e.primitive.name for e in jaxpr.eqns]
  if inlined:    # the body's convolutions now stand at the top level, canonical
    assert "jit" not in names and "pjit" not in names
    top = [e.params["dimension_numbers"] for e in jaxpr.eqns
           if e.primitive.name == "conv_general_dilated"]
    assert len(top) == 3 and all(_is_canonical(dn) for dn in top)
  else:          # kept as it was: one call, its options and its (permuted) convolutions
    assert names in (["jit"], ["pjit"])
    for key in ("in_shardings", "out_shardings", "in_layouts", "out_layouts"):
      assert jaxpr.eqns[0].params[key] == eqns[0].params[key]
    assert not all(_is_canonical(dn) for dn in _convolutions(jaxpr))
  expected = (jax.jit(grad)(*args)[0], 2 * args[1])
  for a, b in zip(jax.jit(rewritten)(*args), expected):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(jnp.max(jnp.abs(b))))


def test_a_nested_call_with_compiler_options_is_not_inlinable():
  """jax 0.10 refuses compiler options on a nested jit, so the params are those of a traced
  plain call with options added."""
  from conicgrad_jax.task_updates.conv_layout import _inlinable
  grad, args = _net("nhwc_hwio_stride2")
  params = jax.make_jaxpr(lambda w, x: jax.jit(grad)(w, x))(*args).jaxpr.eqns[0].params
  assert _inlinable(params)
  assert _inlinable(dict(params, compiler_options_kvs=()))
  assert not _inlinable(dict(params, compiler_options_kvs=(("xla_cpu_enable_fast_math", False),)))


def _conv_problem(k=3, seed=0):
  rng = np.random.default_rng(seed)
  params = {"conv": jnp.asarray(rng.standard_normal((3, 3, 2, 4)) * 0.3, jnp.float32),
            "heads": jnp.asarray(rng.standard_normal((4, k)) * 0.3, jnp.float32)}
  x = jnp.asarray(rng.standard_normal((5, 8, 8, 2)), jnp.float32)
  y = jnp.asarray(rng.standard_normal((5, k)), jnp.float32)

  def losses(p, x, y):
    h = lax.conv_general_dilated(x, p["conv"], (2, 2), "SAME",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    z = jnp.mean(jax.nn.relu(h), axis=(1, 2))
    return jnp.mean((z @ p["heads"] - y) ** 2, axis=0)

  return losses, params, x, y


def test_amortised_step_equals_the_host_schedule_with_canonical_branches():
  losses, params, x, y = _conv_problem()
  shared = lambda path, leaf: "conv" in jax.tree_util.keystr(path)
  task = cg.make_task_update(losses, cg.conicgrad(0.5, num_tasks=3), shared=shared,
                             every=2, canonical_convolutions=True)
  step = jax.jit(task.step)
  host = (jax.jit(task.recompute), jax.jit(task.reuse))
  state_step = state_host = task.init(params)
  for i in range(4):
    _, u_step, state_step = step(params, state_step, x, y)
    _, u_host, state_host = host[i % 2](params, state_host, x, y)
    for a, b in zip(jax.tree_util.tree_leaves(u_step), jax.tree_util.tree_leaves(u_host)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  jaxpr = jax.make_jaxpr(task.step)(params, task.init(params), x, y).jaxpr
  assert [e.primitive.name for e in jaxpr.eqns].count("cond") == 1
  found = _convolutions_in(jaxpr, "cond")
  assert found and all(_is_canonical(dn) for dn in found)


def test_canonical_convolutions_option_is_validated_and_defaults_to_cpu():
  from conicgrad_jax.task_updates import _common
  assert _common.default_canonical_convolutions() == (jax.default_backend() == "cpu")
  losses, *_ = _conv_problem()
  with pytest.raises(ValueError, match="canonical_convolutions"):
    cg.make_task_update(losses, cg.conicgrad(0.5, num_tasks=3), every=2,
                        canonical_convolutions="yes")


@pytest.mark.parametrize("mode", ["chunked", "gramian"])
def test_loop_bodies_are_canonical_and_give_the_unrolled_update(mode):
  losses, params, x, y = _conv_problem(k=4)
  shared = lambda path, leaf: "conv" in jax.tree_util.keystr(path)
  options = {"chunk_size": 2} if mode == "chunked" else {}
  build = lambda **kw: cg.make_task_update(losses, cg.mgda(num_tasks=4), mode=mode,
                                           shared=shared, **options, **kw)
  looped, unrolled = build(unroll=False, canonical_convolutions=True), build(unroll=True)
  state = looped.init(params)
  _, u_loop, _ = jax.jit(looped.step)(params, state, x, y)
  _, u_unrolled, _ = jax.jit(unrolled.step)(params, state, x, y)
  # The two programs round G differently, and MGDA's float32 answer can move with that
  # rounding by more than rounding (seen: up to 9e-5 of the leaf's largest entry).
  for a, b in zip(jax.tree_util.tree_leaves(u_loop), jax.tree_util.tree_leaves(u_unrolled)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=5e-4 * float(np.abs(b).max()))
  # The convolutions inside the loop body (those at the top level XLA rewrites itself).
  found = _convolutions_in(jax.make_jaxpr(looped.step)(params, state, x, y).jaxpr, "scan")
  assert found and all(_is_canonical(dn) for dn in found)
  as_traced = build(unroll=False, canonical_convolutions=False)
  found = _convolutions_in(jax.make_jaxpr(as_traced.step)(params, state, x, y).jaxpr, "scan")
  assert not all(_is_canonical(dn) for dn in found)


@pytest.mark.slow
def test_vmapped_amortised_step_is_the_same_with_and_without_the_rewrite():
  """Under vmap (here over two parameter sets) the rewritten branches batch like the originals."""
  losses, params, x, y = _conv_problem()
  shared = lambda path, leaf: "conv" in jax.tree_util.keystr(path)
  batched = jax.tree_util.tree_map(lambda a: jnp.stack([a, 1.1 * a]), params)
  updates = []
  for canonical in (True, False):
    task = cg.make_task_update(losses, cg.conicgrad(0.5, num_tasks=3), shared=shared,
                               every=2, canonical_convolutions=canonical)
    step = jax.jit(jax.vmap(task.step, in_axes=(0, 0, None, None)))
    states = jax.vmap(task.init)(batched)
    for _ in range(3):
      _, update, states = step(batched, states, x, y)
    updates.append(update)
  for a, b in zip(*map(jax.tree_util.tree_leaves, updates)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_public_task_gradient_functions_take_the_option():
  losses, params, x, y = _conv_problem(k=4)
  shared = lambda path, leaf: "conv" in jax.tree_util.keystr(path)
  grads = {canonical: cg.value_and_task_grads(losses, shared=shared, chunk_size=2, unroll=False,
                                              canonical_convolutions=canonical)
           for canonical in (True, False)}
  found = _convolutions_in(jax.make_jaxpr(grads[True])(params, x, y).jaxpr, "scan")
  assert found and all(_is_canonical(dn) for dn in found)
  found = _convolutions_in(jax.make_jaxpr(grads[False])(params, x, y).jaxpr, "scan")
  assert not all(_is_canonical(dn) for dn in found)
  for a, b in zip(*[jax.tree_util.tree_leaves(jax.jit(grads[c])(params, x, y)) for c in (True, False)]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)

  weighting = lambda gram: cg.conic_weighting(gram, 0.5)
  updates = {canonical: cg.gramian_value_and_update(losses, weighting, shared=shared, unroll=False,
                                                    canonical_convolutions=canonical)
             for canonical in (True, False)}
  found = _convolutions_in(jax.make_jaxpr(updates[True])(params, x, y).jaxpr, "scan")
  assert found and all(_is_canonical(dn) for dn in found)
  out = [jax.jit(updates[c])(params, x, y) for c in (True, False)]
  for a, b in zip(jax.tree_util.tree_leaves(out[0][1]), jax.tree_util.tree_leaves(out[1][1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for build in (lambda: cg.value_and_task_grads(losses, canonical_convolutions=1),
                lambda: cg.gramian_value_and_update(losses, weighting, canonical_convolutions=1)):
    with pytest.raises(ValueError, match="canonical_convolutions"):
      build()
