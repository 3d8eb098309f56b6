"""The contract matrix: every registered method through the compositions users build.

Driven by ``cg.methods()`` and each factory's signature, so a new method is
checked without editing this file. Per method, one program is compiled once
(module-scoped cache) and shared by the default checks:
``skip_nonfinite(accumulate_task_grads(chain(inject_hyperparams(method)(<float
options, the first as a schedule>, shared=<predicate>, num_tasks=K),
sgd(momentum)), every=2))`` carried through ``jax.jit(lax.scan)``, with the heads'
gradients summed by ``value_and_task_grads(shared=...)``. It runs micro-batch
sequences and large-batch sequences (a non-finite batch inside a round, a
pickle round trip between calls) that describe the same training, so they must
agree at every step; SGD is linear in the gradients, so a scale error shows.

Dtypes, Adam chains and bad input are checked by tracing (``jax.eval_shape``)
or eagerly, without compiling. The slow part: nnx.Optimizer with a mask and
stacked heads, each float option injected alone, orbax round trips.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import conicgrad_jax as cg

K = 2
LR = 0.05
METHODS = sorted(cg.methods())

# Constructor arguments a method needs beyond num_tasks/shared (none today; e.g.
# "moco": {"beta": 0.5}). Every update also gets losses= (methods ignore extras).
REQUIRED_ARGS: dict[str, dict] = {}

# Float options that cannot be injected by optax.inject_hyperparams today (they
# steer Python control flow or are checked eagerly); they are passed in
# static_args. test_not_injectable_options_are_float_options keeps this list exact.
NOT_INJECTABLE = {
    "fairgrad": ("alpha", "max_norm"),   # alpha == 1 picks a formulation; max_norm <= 0 skips the clip
    "nash_mtl": ("max_norm",),            # max_norm <= 0 skips the clip (Python `if`)
}


def factory(name):
  return cg.methods()[name].factory


def float_options(name) -> list[str]:
  """The numeric hyper-parameters: the factory's options with a float default."""
  sig = inspect.signature(factory(name))
  return [p for p, v in sig.parameters.items()
          if isinstance(v.default, float) and not isinstance(v.default, bool)]


def static_options(name, injected) -> tuple[str, ...]:
  sig = inspect.signature(factory(name))
  return tuple(p for p in sig.parameters if p not in injected)


def build(name, **kwargs):
  return factory(name)(num_tasks=K, **REQUIRED_ARGS.get(name, {}), **kwargs)


# --- the model: an encoder shared by the K tasks and a head per task ---------------

def is_shared(path, leaf=None):
  return any(getattr(k, "key", None) == "enc" for k in path)


MASK = {"enc": {"kernel": True, "bias": True}, "heads": {"kernel": False, "bias": False}}


class Net(nnx.Module):

  def __init__(self, rngs):
    self.enc = nnx.Linear(3, 4, rngs=rngs)
    self.heads = nnx.Linear(4, K, rngs=rngs)

  def __call__(self, x):
    return self.heads(jnp.tanh(self.enc(x)))


def as_dict(model):
  return {name: {"kernel": getattr(model, name).kernel[...], "bias": getattr(model, name).bias[...]}
          for name in ("enc", "heads")}


def task_losses(p, x, y):
  pred = jnp.tanh(x @ p["enc"]["kernel"] + p["enc"]["bias"]) @ p["heads"]["kernel"]
  return jnp.mean((pred + p["heads"]["bias"] - y) ** 2, axis=0)


def batches():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 8, 3)).astype(np.float32)
  y = rng.standard_normal((3, 8, K)).astype(np.float32)
  y[:, :, 1] *= 3.0                                  # tasks of different scales
  return jnp.asarray(x), jnp.asarray(y)


def nnx_update(optimizer, model, grads, **kwargs):
  if "model" in inspect.signature(nnx.Optimizer.update).parameters:   # flax >= 0.11
    return optimizer.update(model, grads, **kwargs)
  return optimizer.update(grads, **kwargs)


def pure(tree):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def injected(name):
  """The method through optax.inject_hyperparams: every injectable float option traced (the
  first one given as a schedule, i.e. a callable), ``shared`` a predicate."""
  floats = [f for f in float_options(name) if f not in NOT_INJECTABLE.get(name, ())]
  sig = inspect.signature(factory(name))
  hps = {f: sig.parameters[f].default for f in floats}
  if floats:
    hps[floats[0]] = (lambda value: (lambda count: value))(hps[floats[0]])
  return optax.inject_hyperparams(factory(name), static_args=static_options(name, floats))(
      **hps, shared=is_shared, num_tasks=K, **REQUIRED_ARGS.get(name, {}))


def sequences():
  """Four steps per call, two calls; every=2 rounds, a non-finite batch inside a round.

  ``micro``: the halves of each large batch (each repeated to 8 rows, which keeps its mean
  loss); ``large``: each large batch twice (the mean of two equal batches is the batch).
  Both describe the same training: rounds B0, B1, B2, so they must end equal.
  """
  x, y = batches()
  nan_x = x[0].at[0, 0].set(jnp.nan)
  half = lambda a, i, h: jnp.concatenate([a[i, 4 * h:4 * h + 4]] * 2)
  micro = [[(half(x, 0, 0), half(y, 0, 0)), (nan_x, y[0]), (half(x, 0, 1), half(y, 0, 1)),
            (half(x, 1, 0), half(y, 1, 0))],
           [(half(x, 1, 1), half(y, 1, 1)), (half(x, 2, 0), half(y, 2, 0)),
            (half(x, 2, 1), half(y, 2, 1)), (nan_x, y[0])]]
  large = [[(x[0], y[0]), (nan_x, y[0]), (x[0], y[0]), (x[1], y[1])],
           [(x[1], y[1]), (x[2], y[2]), (x[2], y[2]), (nan_x, y[0])]]
  stack = lambda steps: (jnp.stack([a for a, _ in steps]), jnp.stack([b for _, b in steps]))
  return [stack(c) for c in micro], [stack(c) for c in large]


@dataclasses.dataclass
class ScanRun:
  micro_steps: list        # per-step params of both calls, micro-batch accumulation
  large_steps: list        # the same with large batches
  states: object           # per-step states of the first micro call
  resumed_without_pickle: list
  pickled_equal: bool
  carry_keeps_types: bool  # shapes, dtypes and weak types of init's state
  total_notfinite: int


@functools.lru_cache(maxsize=None)
def scan_run(name) -> ScanRun:
  tx = cg.skip_nonfinite(cg.accumulate_task_grads(
      optax.chain(injected(name), optax.sgd(LR, momentum=0.9)), every=2, num_tasks=K))

  def run(params, state, xs, ys):
    def body(carry, xy):
      p, s = carry
      losses, g = cg.value_and_task_grads(task_losses, shared=is_shared)(p, *xy)  # heads summed
      u, s = tx.update(g, s, p, losses=losses)
      p = optax.apply_updates(p, u)
      return (p, s), (p, s)
    return jax.lax.scan(body, (params, state), (xs, ys))

  params = as_dict(Net(nnx.Rngs(0)))
  micro, large = sequences()
  # Compiled once, ahead of time, at XLA's lowest backend optimisation level (same maths,
  # a third less compile time). The executable raises TypeError for arguments of any other
  # type, so every call below also checks that the carry keeps the types of init's state.
  run = jax.jit(run).lower(params, tx.init(params), *micro[0]).compile(
      compiler_options={"xla_backend_optimization_level": 0})
  carry, (micro_p1, states) = run(params, tx.init(params), *micro[0])
  restored = pickle.loads(pickle.dumps(carry))
  pickled_equal = all(np.array_equal(a, b) and np.asarray(a).dtype == np.asarray(b).dtype
                      for a, b in zip(pure(carry), pure(restored)))
  last, (micro_p2, _) = run(*restored, *micro[1])
  _, (direct_p2, _) = run(*carry, *micro[1])
  carry_l, (large_p1, _) = run(params, tx.init(params), *large[0])
  _, (large_p2, _) = run(*carry_l, *large[1])
  weak = lambda tree: [bool(getattr(x, "weak_type", False)) for x in jax.tree_util.tree_leaves(tree)]
  init = tx.init(params)
  same_types = weak(init) == weak(carry[1]) and _avals(init) == _avals(carry[1])
  return ScanRun([micro_p1, micro_p2], [large_p1, large_p2], states, direct_p2, pickled_equal,
                 same_types, int(last[1].total_notfinite))


def step_params(steps, i):
  """The parameters after step i (of both calls), as a list of arrays."""
  call, j = divmod(i, 4)
  return [np.asarray(leaf[j]) for leaf in jax.tree_util.tree_leaves(steps[call])]


def some_methods_by_default(*default):
  """Every method as a parameter; those not in ``default`` run under ``-m slow``."""
  return [pytest.param(n, marks=() if n in default else pytest.mark.slow) for n in METHODS]


@pytest.mark.parametrize("name", METHODS)
def test_accumulated_micro_batches_equal_large_batches_at_every_step(name):
  """lax.scan + skip_nonfinite + accumulate_task_grads + inject_hyperparams + SGD, with
  summed heads: the micro-batch run trains exactly as the large-batch run."""
  run = scan_run(name)
  for i in range(8):
    for a, b in zip(step_params(run.micro_steps, i), step_params(run.large_steps, i)):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"step {i}")


@pytest.mark.parametrize("name", METHODS)
def test_scan_step_compiles_once_and_pickle_resumes_identically(name):
  run = scan_run(name)   # (the ahead-of-time executable accepted every carry)
  assert run.carry_keeps_types
  assert run.pickled_equal
  for a, b in zip(pure(run.micro_steps[1]), pure(run.resumed_without_pickle)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_nonfinite_step_leaves_params_and_whole_state_untouched(name):
  run = scan_run(name)
  for a, b in zip(step_params(run.micro_steps, 0), step_params(run.micro_steps, 1)):
    np.testing.assert_array_equal(a, b)                           # step 1 is the NaN batch
  before, after = jax.tree_util.tree_map(lambda s: s[0], run.states), \
      jax.tree_util.tree_map(lambda s: s[1], run.states)
  # Method state, SGD momentum, accumulator, schedule counts: all untouched.
  for a, b in zip(pure(before.inner_state), pure(after.inner_state)):
    np.testing.assert_array_equal(a, b)
  assert (int(after.notfinite_count), bool(after.last_finite), int(after.total_notfinite)) \
      == (1, False, 1)
  assert run.total_notfinite == 2
  # Training continues: step 2 completes the round.
  assert any(not np.allclose(a, b) for a, b in
             zip(step_params(run.micro_steps, 1), step_params(run.micro_steps, 2)))


@pytest.mark.parametrize("name", [n for n in METHODS if cg.methods()[n].needs_losses])
def test_infinite_or_nan_losses_skip_the_step(name):
  """Finite gradients but a non-finite loss: zero update, state kept, counted."""
  params = {"enc": jnp.zeros(3)}
  grads = {"enc": jnp.asarray([[1.0, 0.0, 2.0], [0.0, 1.5, -1.0]])}
  tx = build(name)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for bad in (jnp.inf, jnp.nan):
    u, new_state = update(grads, state, params, losses=jnp.array([bad, 1.0]))
    assert np.all(np.asarray(u["enc"]) == 0.0)
    assert int(new_state.nonfinite_steps) == 1
    for a, b in zip(pure(state), pure(new_state._replace(nonfinite_steps=state.nonfinite_steps))):
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_nnx_optimizer_with_mask_and_stacked_heads_trains_as_the_scan(name):
  """nnx.Optimizer(model, chain(method(shared=<mask>), sgd), wrt=nnx.Param) in an nnx.jit
  step (one trace), stacked heads, over B0, B1, B2: the parameters of the scan runs."""
  tx = optax.chain(build(name, shared=MASK), optax.sgd(LR, momentum=0.9))
  model = Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  traces = []

  @nnx.jit
  def step(model, optimizer, x, y):
    traces.append(1)
    graphdef, params = nnx.split(model, nnx.Param)

    def losses_fn(p, x, y):
      return task_losses(as_dict(nnx.merge(graphdef, p)), x, y)

    losses, grads = cg.value_and_task_grads(losses_fn)(params, x, y)   # heads stacked
    nnx_update(optimizer, model, grads, losses=losses)

  x, y = batches()
  for i in range(3):
    step(model, optimizer, x[i], y[i])
  assert len(traces) == 1
  for a, b in zip(pure(as_dict(model)), step_params(scan_run(name).large_steps, 6)):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


# --- traced checks: dtypes and type stability (no compilation) -------------------

def _grads_like(params, summed_heads=True):
  def g(path, p):
    stacked = jnp.stack([p, 2 * p + 1]).astype(p.dtype)
    return p + 1 if summed_heads and not is_shared(path) else stacked
  return jax.tree_util.tree_map_with_path(g, params)


def _traced_update(tx, params, grads):
  state = tx.init(params)
  updates, new_state = jax.eval_shape(
      lambda s: tx.update(grads, s, params, losses=jnp.array([1.0, 2.0], jnp.float32)), state)
  return state, updates, new_state


def _avals(tree):
  return [(tuple(x.shape), jnp.dtype(x.dtype)) for x in jax.tree_util.tree_leaves(tree)]


@pytest.mark.parametrize("name", METHODS)
def test_adam_chain_keeps_its_types_and_bf16_params_give_bf16_updates(name):
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), as_dict(Net(nnx.Rngs(0))))
  tx = optax.chain(build(name, shared=MASK), optax.adam(1e-3))
  state, updates, new_state = _traced_update(tx, params, _grads_like(params))
  assert _avals(updates) == _avals(params)
  assert _avals(new_state) == _avals(state)        # a jit/scan carry keeps its types


@pytest.mark.parametrize("name", METHODS)
def test_updates_take_the_parameters_dtype_not_the_gradients(name):
  """float32 task gradients for bfloat16 parameters: bfloat16 updates."""
  params32 = as_dict(Net(nnx.Rngs(0)))
  params = jax.tree_util.tree_map(lambda p: p.astype(jnp.bfloat16), params32)
  _, updates, _ = _traced_update(build(name, shared=MASK), params, _grads_like(params32))
  assert _avals(updates) == _avals(params)


def _x64():
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64   # jax < 0.8
  return enable_x64()


@pytest.mark.parametrize("name", METHODS)
def test_float64_under_x64_gives_float64_updates_and_state_weights(name):
  with _x64():
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), as_dict(Net(nnx.Rngs(0))))
    tx = build(name, shared=MASK)
    state, updates, new_state = _traced_update(tx, params, _grads_like(params))
    assert all(d == jnp.float64 for _, d in _avals(updates))
    assert _avals(new_state) == _avals(state)
    weights = [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(new_state)[0]
               if any(getattr(k, "name", None) == "weights" for k in path)]
    assert all(jnp.dtype(w.dtype) == jnp.float64 for w in weights), (
        [jnp.dtype(w.dtype) for w in weights])


@pytest.mark.parametrize("name", ["conicgrad", "imtl_g"])
def test_a_state_made_at_the_first_update_follows_float64_gradients(name):
  """Without ``num_tasks`` the first update builds the state: in float64 under x64."""
  with _x64():
    tx = cg.methods()[name].factory()
    grads = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((K, 5)), jnp.float64)}
    _, state = jax.jit(tx.update)(grads, tx.init(None))
    assert state.weights.shape == (K,) and state.weights.dtype == jnp.float64


# --- inject_hyperparams -----------------------------------------------------------

def _inject_cases():
  cases = []
  for name in METHODS:
    for option in float_options(name):
      marks = ([pytest.mark.xfail(strict=True, raises=(TypeError, ValueError),
                                  reason="steers Python control flow")]
               if option in NOT_INJECTABLE.get(name, ()) else [])
      cases.append(pytest.param(name, option, marks=marks, id=f"{name}-{option}"))
  return cases


@pytest.mark.slow
@pytest.mark.parametrize("name, option", _inject_cases())
def test_each_numeric_option_can_be_injected(name, option):
  """Each float option alone, traced (as optax passes it), with ``shared`` a predicate."""
  params = as_dict(Net(nnx.Rngs(0)))
  default = inspect.signature(factory(name)).parameters[option].default
  tx = optax.inject_hyperparams(factory(name), static_args=static_options(name, [option]))(
      **{option: lambda count: default}, shared=is_shared, num_tasks=K,
      **REQUIRED_ARGS.get(name, {}))
  state, updates, new_state = _traced_update(tx, params, _grads_like(params))
  assert _avals(updates) == _avals(params)
  assert _avals(new_state) == _avals(state)


@pytest.mark.slow
@pytest.mark.parametrize("name, option",
                         [c for c in _inject_cases() if not c.marks])
def test_injected_option_gives_the_update_of_the_method_built_with_it(name, option):
  params = as_dict(Net(nnx.Rngs(0)))
  default = inspect.signature(factory(name)).parameters[option].default
  value = 0.5 * default if default else 0.1
  grads = _grads_like(params)
  losses = jnp.array([1.0, 2.0])
  injected = optax.inject_hyperparams(factory(name), static_args=static_options(name, [option]))(
      **{option: value}, shared=is_shared, num_tasks=K, **REQUIRED_ARGS.get(name, {}))
  plain = build(name, shared=is_shared, **{option: value})
  a, _ = jax.jit(injected.update)(grads, injected.init(params), params, losses=losses)
  b, _ = jax.jit(plain.update)(grads, plain.init(params), params, losses=losses)
  for x, y in zip(pure(a), pure(b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_readme_inject_hyperparams_form_with_a_predicate():
  # README: optax.inject_hyperparams(cg.conicgrad, static_args=("num_tasks", "shared"))(
  #   c=schedule, shared=predicate, num_tasks=K)
  params = as_dict(Net(nnx.Rngs(0)))
  tx = optax.inject_hyperparams(cg.conicgrad, static_args=("num_tasks", "shared"))(
      c=optax.linear_schedule(0.9, 0.1, 10), shared=is_shared, num_tasks=K)
  state, updates, new_state = _traced_update(tx, params, _grads_like(params))
  assert _avals(updates) == _avals(params)
  assert _avals(new_state) == _avals(state)
  # Without "shared" in static_args optax takes the predicate for a schedule.
  with pytest.raises(TypeError):
    optax.inject_hyperparams(cg.conicgrad, static_args=("num_tasks",))(
        c=0.5, shared=lambda path, leaf: is_shared(path), num_tasks=K).init(params)


# --- bad input: a ValueError naming the argument or key path, in a short message ----

def _value_error(fn, *patterns):
  with pytest.raises(ValueError) as info:
    fn()
  message = str(info.value).split("\n----")[0]      # jax may append a traceback note
  assert len(message) < 600, message
  for pattern in patterns:
    assert pattern in message, message
  return message


@dataclasses.dataclass
class EqxStyle:
  """A module as Equinox registers one: a dataclass pytree with array fields."""
  enc: jax.Array
  heads: jax.Array


jax.tree_util.register_dataclass(EqxStyle, data_fields=["enc", "heads"], meta_fields=[])


@pytest.mark.parametrize("name", METHODS)
def test_missing_leaf_is_named_for_dict_nnx_state_and_dataclass_params(name):
  tx = build(name)
  losses = jnp.array([1.0, 2.0])
  # dict
  params = {"enc": jnp.ones(3), "heads": jnp.ones(2)}
  _value_error(lambda: tx.update({"enc": jnp.ones((K, 3))}, tx.init(params), params,
                                 losses=losses), "['heads']")
  # flax NNX State
  state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  grads = jax.tree_util.tree_map(lambda p: jnp.stack([p] * K), state)
  del grads["heads"]["bias"]
  _value_error(lambda: tx.update(grads, tx.init(state), state, losses=losses),
               "['heads']['bias']")
  # dataclass module
  module = EqxStyle(jnp.ones(3), jnp.ones(2))
  # (Equinox's filtered gradients hold None for what they skip: a leaf goes missing.)
  _value_error(lambda: tx.update(EqxStyle(jnp.ones((K, 3)), None), tx.init(module), module,
                                 losses=losses), "missing 1 key path", ".heads")


@pytest.mark.parametrize("name", METHODS)
def test_bad_mask_wrong_k_non_array_and_missing_params_are_named(name):
  params = {"enc": jnp.ones(3), "heads": jnp.ones(2)}
  grads = {"enc": jnp.ones((K, 3)), "heads": jnp.ones(2)}
  losses = jnp.array([1.0, 2.0])
  tx = build(name, shared={"enc": True, "head": False})   # misspelt key
  _value_error(lambda: tx.update(grads, tx.init(params), params, losses=losses),
               "`shared`", "['heads']", "['head']")
  tx = build(name, shared={"enc": True, "heads": False})
  _value_error(lambda: tx.update(grads, tx.init(params), losses=losses), "params")  # no params
  tx = build(name)
  stacked = {"enc": jnp.ones((K + 1, 3)), "heads": jnp.ones((K + 1, 2))}
  _value_error(lambda: tx.update(stacked, tx.init(params), params,
                                 losses=jnp.ones(K + 1)), "['enc']")
  _value_error(lambda: tx.update({"enc": jnp.ones((K, 3)), "heads": "oops"}, tx.init(params),
                                 losses=losses), "['heads']")
  _value_error(lambda: factory(name)(num_tasks=0, **REQUIRED_ARGS.get(name, {})), "num_tasks")


# Numeric options that may be arrays (one value per task).
PER_TASK_OPTIONS = {("famo", "min_losses")}


@pytest.mark.parametrize("name", METHODS)
def test_bad_option_values_are_named_at_construction(name):
  """NaN and array values of numeric options, non-bools for bool options, non-integer seeds."""
  for option, parameter in inspect.signature(factory(name)).parameters.items():
    default = parameter.default
    if isinstance(default, bool):
      bad_values = ["no"]
    elif option == "seed":
      bad_values = [1.5]
    elif isinstance(default, (int, float)):
      bad_values = [float("nan")]
      if (name, option) not in PER_TASK_OPTIONS:
        bad_values.append(np.array([0.5, 0.7]))
    else:
      continue
    for value in bad_values:
      _value_error(lambda: build(name, **{option: value}), f"`{option}`")


@pytest.mark.parametrize("name", [n for n in METHODS if cg.methods()[n].needs_losses])
def test_update_without_losses_names_losses(name):
  params = {"enc": jnp.ones(3)}
  tx = build(name)
  _value_error(lambda: jax.eval_shape(
      lambda s: tx.update({"enc": jnp.ones((K, 3))}, s, params), tx.init(params)), "losses")


@pytest.mark.parametrize("name", METHODS)
def test_jacobian_methods_are_marked_and_refuse_gram_level_task_updates(name):
  """The registry's ``needs_jacobian`` is the transformation's type, and make_task_update
  refuses the modes that would hand such a method something other than J."""
  tx = build(name)
  needs_jacobian = cg.methods()[name].needs_jacobian
  assert isinstance(tx, cg.aggregator.JacobianTransformation) == needs_jacobian
  losses = lambda p, x: jnp.stack([jnp.sum(p["w"] * x), jnp.sum(p["w"] ** 2)])
  for options in ({"mode": "gramian"}, {"mode": "representation", "encode": lambda p, x: x},
                  {"every": 2}):
    if needs_jacobian:
      _value_error(lambda: cg.make_task_update(losses, tx, **options), "stacked", "chunked")
      # Wrapped for its diagnostics, it is still refused.
      _value_error(lambda: cg.make_task_update(losses, cg.with_diagnostics(tx), **options),
                   "stacked", "chunked")
  cg.make_task_update(losses, tx, mode="chunked", chunk_size=1)   # accepted for every method


def test_not_injectable_options_are_float_options():
  # Keeps NOT_INJECTABLE honest when options are renamed; the xfail(strict=True) cases
  # of test_each_numeric_option_can_be_injected fail once an option becomes injectable.
  for name, options in NOT_INJECTABLE.items():
    assert set(options) <= set(float_options(name)), name


@pytest.mark.slow
@pytest.mark.parametrize("name", METHODS)
def test_orbax_round_trip_resumes_identically(name, tmp_path):
  ocp = pytest.importorskip("orbax.checkpoint")
  params = as_dict(Net(nnx.Rngs(0)))
  tx = optax.chain(build(name, shared=MASK), optax.adam(1e-2))
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, losses=jnp.array([1.0, 2.0])))
  grads = _grads_like(params, summed_heads=False)
  _, state = step(grads, tx.init(params), params)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(tmp_path / "state", state)
  checkpointer.wait_until_finished()
  restored = checkpointer.restore(tmp_path / "state", state)
  for a, b in zip(pure(state), pure(restored)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  for a, b in zip(pure(step(grads, state, params)), pure(step(grads, restored, params))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", METHODS)
def test_every_state_leaf_is_its_own_buffer(name):
  """``jax.jit(step, donate_argnums=...)`` donates each state buffer once: a state that
  holds one array in two leaves fails there with "donate the same buffer twice"."""
  params = {"enc": {"kernel": jnp.zeros((3, 2))}, "heads": {"kernel": jnp.zeros((K, 2))}}
  leaves = [x for x in jax.tree_util.tree_leaves(build(name).init(params))
            if isinstance(x, jax.Array) and x.size]
  pointers = [x.unsafe_buffer_pointer() for x in leaves]
  assert len(set(pointers)) == len(pointers)


def test_donated_params_and_state_give_the_undonated_step():
  opt = optax.chain(cg.conicgrad(0.5, num_tasks=K), optax.adam(1e-2))

  def step(params, state, grads):
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  grads = {"w": jnp.asarray(np.random.default_rng(0).standard_normal((K, 3)), jnp.float32)}
  expected, _ = jax.jit(step)({"w": jnp.ones(3)}, opt.init({"w": jnp.ones(3)}), grads)
  params = {"w": jnp.ones(3)}
  donated, _ = jax.jit(step, donate_argnums=(0, 1))(params, opt.init(params), grads)
  np.testing.assert_allclose(np.asarray(donated["w"]), np.asarray(expected["w"]), rtol=1e-6)


@pytest.mark.parametrize("name", some_methods_by_default("conicgrad", "db_mtl", "excess_mtl",
                                                      "pcgrad", "linear_scalarization"))
def test_finite_gradients_that_overflow_skip_the_step(name):
  """Finite inputs whose update or state overflows: float16 task gradients of 40,000
  (their combination exceeds float16's 65,504), and float32 gradients of 1e20 (squared
  buffers overflow). The update and the state stay finite; a skipped step (counted) has
  a zero update and keeps the state."""
  losses = jnp.array([0.5, 1.0], jnp.float32)
  for dtype, value in ((jnp.float16, 40000.0), (jnp.float32, 1e20)):
    grads = {"w": jnp.full((K, 4), value, dtype).at[:, 1].set(1.0)}
    params = {"w": jnp.zeros((4,), dtype)}
    tx = build(name)
    state = tx.init(params)
    update, new_state = jax.jit(lambda g, s: tx.update(g, s, params, losses=losses))(
        grads, state)
    assert bool(jnp.all(jnp.isfinite(update["w"]))), dtype
    for leaf in jax.tree_util.tree_leaves(new_state):
      if jnp.issubdtype(leaf.dtype, jnp.inexact):
        assert bool(jnp.all(jnp.isfinite(leaf))), dtype
    if int(new_state.nonfinite_steps) == 1:        # skipped: no update, the state kept
      assert bool(jnp.all(update["w"] == 0)), dtype
      for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state)):
        if jnp.issubdtype(a.dtype, jnp.inexact):        # (counters: a wrapper's inner one)
          np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:       # taken: every task gradient is the same vector, so the update is not zero
      assert int(new_state.nonfinite_steps) == 0, dtype
      assert bool(jnp.any(update["w"] != 0)), dtype
    if dtype == jnp.float32 and cg.methods()[name].gram_weighting:
      # Gradients of 1e20 overflow G (entries ~4e40): a Gram method skips the step.
      assert int(new_state.nonfinite_steps) == 1, name


@pytest.mark.parametrize("name", some_methods_by_default("famo", "graddrop", "mgda"))
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_nonfinite_task_gradients_give_a_zero_update_keep_the_state_and_count(name, bad):
  """Every method on its own, without `skip_nonfinite`: one NaN or Inf entry in the task
  gradients gives an all-zero update, the state unchanged but for `nonfinite_steps`,
  which counts the step (docs: numerics, non-finite gradients)."""
  params = {"w": jnp.zeros((4,), jnp.float32)}
  good = {"w": jnp.asarray([[1.0, 0.5, -0.2, 0.3], [-0.4, 1.0, 0.1, 0.2]], jnp.float32)}
  losses = jnp.array([0.5, 1.0], jnp.float32)
  tx = build(name)
  step = jax.jit(lambda g, s: tx.update(g, s, params, losses=losses))
  _, state = step(good, tx.init(params))        # a state that holds a step
  update, new_state = step({"w": good["w"].at[1, 2].set(bad)}, state)
  assert bool(jnp.all(update["w"] == 0)), update
  assert int(new_state.nonfinite_steps) == int(state.nonfinite_steps) + 1
  # Unchanged but for the counters of skipped steps (a wrapper's inner method counts too).
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new_state)[0],
                          jax.tree_util.tree_leaves(state)):
    if not jax.tree_util.keystr(path).endswith("nonfinite_steps"):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                    err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", some_methods_by_default("famo", "graddrop", "mgda", "rlw"))
def test_vmap_over_independent_problems_gives_each_problems_update(name):
  """``jax.vmap`` of ``update`` over a batch of independent problems (task gradients,
  losses and states batched) gives, for each, the update and state of its own call."""
  rng = np.random.default_rng(3)
  params = {"w": jnp.zeros((4,), jnp.float32)}
  grads = {"w": jnp.asarray(rng.standard_normal((3, K, 4)), jnp.float32)}
  losses = jnp.asarray(rng.uniform(0.5, 2.0, (3, K)), jnp.float32)
  tx = build(name)
  single = jax.jit(lambda g, s, l: tx.update(g, s, params, losses=l))
  # Each problem's own state: one earlier step on its own gradients and losses.
  first = {"w": jnp.asarray(rng.standard_normal((3, K, 4)), jnp.float32)}
  first_losses = jnp.asarray(rng.uniform(0.5, 2.0, (3, K)), jnp.float32)
  own = [single(jax.tree_util.tree_map(lambda x: x[b], first), tx.init(params),
                first_losses[b])[1] for b in range(3)]
  states = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *own)
  batched = jax.jit(jax.vmap(lambda g, s, l: tx.update(g, s, params, losses=l)))
  updates, new_states = batched(grads, states, losses)
  for b in range(3):
    expected = single(jax.tree_util.tree_map(lambda x: x[b], grads), own[b], losses[b])
    got = jax.tree_util.tree_map(lambda x: x[b], (updates, new_states))
    for (path, a), e in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                            jax.tree_util.tree_leaves(expected)):
      where = f"problem {b}, {jax.tree_util.keystr(path)}"
      if jnp.issubdtype(e.dtype, jnp.inexact):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4, atol=1e-5,
                                   err_msg=where)
      elif "iterations" not in jax.tree_util.keystr(path):
        # (A solver's step count may differ: a warm start certified at the tolerance's
        # edge in one program and just missed in the other changes the path, not the answer.)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(e), err_msg=where)


@pytest.mark.parametrize("name", ["conicgrad", "linear_scalarization", "mgda"])
def test_large_finite_float16_updates_are_not_skipped(name):
  """The overflow check skips only what overflows: equal float16 task gradients of
  30,000 give an update of 30,000 (below float16's 65,504), not a skipped step."""
  grads = {"w": jnp.full((K, 4), 30000.0, jnp.float16)}
  params = {"w": jnp.zeros((4,), jnp.float16)}
  tx = build(name)
  update, state = jax.jit(lambda g, s: tx.update(g, s, params, losses=jnp.ones(K)))(
      grads, tx.init(params))
  assert int(state.nonfinite_steps) == 0
  np.testing.assert_allclose(np.asarray(update["w"], np.float32), 30000.0, rtol=2e-3)
