"""Bad input raises ValueError at construction or trace time, naming what is wrong."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg
from conicgrad_jax import conicgrad, value_and_task_grads
from conicgrad_jax import validation
from conicgrad_jax.methods import aligned_mtl as aligned_mtl_m
from conicgrad_jax.methods import cagrad as cagrad_m
from conicgrad_jax.methods import dualproj as dualproj_m
from conicgrad_jax.methods import fairgrad as fairgrad_m
from conicgrad_jax.methods import krum as krum_m
from conicgrad_jax.methods import upgrad as upgrad_m


@pytest.mark.parametrize("c", [-0.1, 1.0, 1.5, float("nan")])
def test_c_outside_unit_interval(c):
  with pytest.raises(ValueError, match=r"`c` must lie in \[0, 1\)"):
    conicgrad(c)


def test_c_of_wrong_type():
  with pytest.raises(ValueError, match="`c` must be a number"):
    conicgrad("half")


@pytest.mark.parametrize("kwargs, match", [
    (dict(preference=[0.5, -0.5]), "preference"),
    (dict(preference=[0.0, 0.0]), "preference"),
    (dict(preference=[[1.0]]), "preference"),
    (dict(preference=[0.5, 0.5], num_tasks=3), "preference"),
    (dict(scale="huge"), "scale"),
    (dict(max_iter=0), "max_iter"),
    (dict(num_tasks=0), "num_tasks"),
    (dict(tol=-1.0), "tol"),
    (dict(shared={"a": False}), "selects no leaf"),
    (dict(shared={"a": "yes"}), "shared"),
])
def test_bad_options_fail_at_construction(kwargs, match):
  with pytest.raises(ValueError, match=match):
    conicgrad(0.5, **kwargs)


def _update(grads, params=None, **kwargs):
  tx = conicgrad(0.5, **kwargs)
  state = tx.init(params)
  return jax.jit(tx.update)(grads, state, params)


def test_leaves_with_different_task_counts_name_the_leaf():
  grads = {"a": jnp.ones((2, 3)), "b": jnp.ones((3, 4))}
  with pytest.raises(ValueError, match=r"\['b'\] has task axis of length 3.*\['a'\] has 2"):
    _update(grads)


def test_num_tasks_mismatch_names_the_leaf():
  with pytest.raises(ValueError, match=r"\['a'\].*built for K = 4 \(its `num_tasks`"):
    _update({"a": jnp.ones((2, 3))}, num_tasks=4)


def test_non_array_leaf_is_named():
  with pytest.raises(ValueError, match=r"\['b'\] is a str"):
    conicgrad(0.5).update({"a": jnp.ones((2, 3)), "b": "oops"}, None)


def test_scalar_leaf_without_task_axis_is_named():
  with pytest.raises(ValueError, match=r"\['s'\] is a scalar"):
    _update({"a": jnp.ones((2, 3)), "s": jnp.asarray(1.0)})


def test_structure_mismatch_with_params():
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"`task_grads` does not have the structure of `params`: "
                     r"missing 1 key path\(s\) of `params`: \['b'\]\."):
    _update({"a": jnp.ones((2, 3))}, params)


def test_shape_mismatch_with_params_names_the_leaf():
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  grads = {"a": jnp.ones((2, 3)), "b": jnp.ones((2, 5))}
  with pytest.raises(ValueError, match=r"\['b'\] has shape \(2, 5\); expected \(K, \*\(2,\)\)"):
    _update(grads, params)


@pytest.mark.parametrize("head", [(5,), (2, 5)])
def test_a_task_specific_leaf_of_the_wrong_shape_is_named(head):
  """A task-specific leaf must be the parameter's shape (summed) or K × that shape."""
  params = {"a": jnp.ones(3), "b": jnp.ones(2)}
  grads = {"a": jnp.ones((2, 3)), "b": jnp.ones(head)}
  with pytest.raises(ValueError, match=r"\['b'\] has shape .*expected \(K, \*\(2,\)\)"):
    _update(grads, params, shared={"a": True, "b": False})


def test_shared_leaf_without_task_axis_is_rejected():
  params = {"a": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"\['a'\] has shape \(3,\)"):
    _update({"a": jnp.ones(3)}, params)


def test_predicate_that_selects_nothing():
  with pytest.raises(ValueError, match="selects no leaf"):
    _update({"a": jnp.ones((2, 3))}, shared=lambda path, leaf: False)


def test_mask_of_wrong_structure():
  with pytest.raises(ValueError, match=r"does not match the structure.*no entry for 1 .*\['b'\]"):
    _update({"a": jnp.ones((2, 3)), "b": jnp.ones((2, 1))}, shared={"a": True})


@pytest.mark.parametrize("mask", [{"a": True, "b": [False]},
                                  {"a": {"kernel": True}, "b": {"kernel": False}}])
def test_a_mask_deeper_than_the_gradients_is_named(mask):
  """A subtree where the gradients have one array must not count as one (truthy) flag."""
  with pytest.raises(ValueError, match=r"does not match the structure"):
    _update({"a": jnp.ones((2, 3)), "b": jnp.ones((2, 1))}, shared=mask)
  with pytest.raises(ValueError, match=r"does not match the structure"):
    cg.gram_matrix({"a": jnp.ones((2, 3)), "b": jnp.ones((2, 1))}, shared=mask)


@pytest.mark.parametrize("name, option", [("imtl_g", "num_tasks"), ("mgda", "num_tasks")])
def test_a_traced_shape_option_is_named(name, option):
  """Injected without static_args, an option that fixes shapes is refused."""
  import optax
  factory = cg.registry.methods()[name].factory
  static = tuple(p for p in inspect.signature(factory).parameters if p != option)
  tx = optax.inject_hyperparams(factory, static_args=static)(**{option: 2})
  grads = {"w": jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
  params = {"w": jnp.zeros(3)}
  with pytest.raises(ValueError, match=f"`{option}` fixes array shapes.*static_args"):
    jax.jit(tx.update)(grads, tx.init(params), params)


def test_state_for_a_different_k():
  tx = conicgrad(0.5, num_tasks=2)
  state = tx.init(None)
  with pytest.raises(ValueError, match="2 tasks|every leaf needs the same K"):
    tx.update({"a": jnp.ones((3, 4))}, state)


@pytest.mark.parametrize("factory", [cg.upgrad, cg.dualproj, cg.aligned_mtl, cg.config,
                                     cg.conicgrad])
def test_preference_length_checked_against_num_tasks_at_construction(factory):
  with pytest.raises(ValueError, match=r"`preference` has shape \(2,\) but `num_tasks` is 3"):
    factory(preference=np.ones(2), num_tasks=3)


@pytest.mark.parametrize("factory", [lambda p: conicgrad(0.5, preference=p),
                                     lambda p: cg.config(preference=p)])
def test_preference_length_checked_against_k_at_trace_time(factory):
  tx = factory(np.ones(3))
  with pytest.raises(ValueError, match="built for K = 3.*length of its `preference`"):
    tx.update({"a": jnp.ones((2, 4))}, tx.init(None))


def test_task_grads_helper_requires_vector_losses():
  f = value_and_task_grads(lambda p: jnp.sum(p["w"]))
  with pytest.raises(ValueError, match="1-D vector of task losses"):
    f({"w": jnp.ones(3)})


def test_summed_head_whose_length_equals_k_needs_params():
  # A (3,) head summed over K = 3 tasks looks stacked without the parameters' shapes.
  params = {"enc": jnp.ones(2), "head": jnp.ones(3)}
  grads = {"enc": jnp.arange(6.0).reshape(3, 2), "head": jnp.array([1.0, 2.0, 3.0])}
  tx = conicgrad(0.5, num_tasks=3, shared={"enc": True, "head": False})
  with pytest.raises(ValueError, match=r"\['head'\] task-specific.*update\(task_grads, state, params\)"):
    jax.jit(tx.update)(grads, tx.init(params))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_array_equal(np.asarray(updates["head"]), [1.0, 2.0, 3.0])


def test_nnx_state_gradients_with_a_missing_leaf_name_it_briefly():
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  grads = jax.tree_util.tree_map(lambda p: jnp.stack([p, p]), params)
  del grads["bias"]
  tx = conicgrad(0.5, num_tasks=2)
  with pytest.raises(ValueError) as info:
    tx.update(grads, tx.init(params), params)
  assert "missing 1 key path(s) of `params`: ['bias']" in str(info.value)
  assert len(str(info.value)) < 600


def test_dict_mask_for_nnx_state_gradients_matches_by_key_path():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.enc = nnx.Linear(2, 3, rngs=rngs)
      self.head = nnx.Linear(3, 1, rngs=rngs)

  params = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  grads = jax.tree_util.tree_map(lambda p: jnp.stack([p, 2 * p]), params)
  tx = conicgrad(0.5, num_tasks=2, shared={"enc": True, "head": False})
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  array = lambda v: np.asarray(jax.tree_util.tree_leaves(v)[0])   # flax 0.10 and newer
  np.testing.assert_allclose(array(updates["head"]["kernel"]), 3 * array(params["head"]["kernel"]))


def test_check_positive():
  validation.check_positive("x", 1.0)
  validation.check_positive("x", 0.0, allow_zero=True)
  validation.check_positive("x", jnp.asarray(2.0))
  jax.jit(lambda v: validation.check_positive("x", v) or v)(1.0)  # traced: unchecked
  for bad in (0.0, -1.0, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="`x`"):
      validation.check_positive("x", bad)
  with pytest.raises(ValueError, match="`x`"):
    validation.check_positive("x", -1e-3, allow_zero=True)
  with pytest.raises(ValueError, match="`x` must be a number"):
    validation.check_positive("x", "big")


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
def test_task_gradients_that_are_not_real_floats_are_refused_by_name(dtype):
  """Integer updates would truncate, complex Gram matrices lack the conjugate: an error instead."""
  tx = cg.conicgrad(num_tasks=2)
  with pytest.raises(ValueError, match=r"leaf \['w'\] has dtype .*real floating point"):
    tx.update({"w": jnp.eye(2).astype(dtype)}, tx.init(None))
  with pytest.raises(ValueError, match=r"leaf \['w'\] has dtype"):
    cg.gram_matrix({"w": jnp.eye(2).astype(dtype)})


@pytest.mark.parametrize("factory, name, value", [
    (cg.conicgrad, "c", 0.5j), (cg.conicgrad, "c", False), (cg.dwa, "temperature", 1j),
    (cg.dwa, "temperature", True), (cg.famo, "w_lr", 1e-3 + 1j), (cg.graddrop, "leak", 0.5j)])
def test_bool_and_complex_options_are_refused_by_name(factory, name, value):
  with pytest.raises(ValueError, match=f"`{name}` must be a"):
    factory(**{name: value})


def test_a_summed_head_without_shared_points_to_the_shared_option():
  params = {"enc": jnp.zeros((3, 2)), "head": jnp.zeros(4)}
  grads = {"enc": jnp.ones((2, 3, 2)), "head": jnp.ones(4)}     # head already summed
  tx = conicgrad(0.5)
  with pytest.raises(ValueError, match=r"\['head'\].*looks summed over the tasks.*`shared=`"):
    tx.update(grads, tx.init(params), params)
  with pytest.raises(ValueError, match=r"\['head'\].*every leaf needs the same K.*`shared=`"):
    tx.update({"enc": jnp.ones((2, 3, 2)), "head": jnp.ones((4, 1))}, tx.init(None))


def test_a_malformed_preference_is_named_before_its_length():
  for bad, shape in ((1.0, r"\(\)"), ([[1.0, 1.0]], r"\(1, 2\)")):
    with pytest.raises(ValueError, match=f"non-empty 1-D vector, got shape {shape}"):
      conicgrad(0.5, preference=bad)
  with pytest.raises(ValueError, match="`tol` must be a number, not a bool"):
    conicgrad(0.5, tol=True)


def test_the_recorded_shared_does_not_keep_its_owner_alive():
  """A bound-method predicate points back to its object; the record must not pin it."""
  import gc
  import weakref

  class Trainer:
    def __init__(self):
      self.tx = conicgrad(0.5, shared=self.is_shared, num_tasks=2)

    def is_shared(self, path, leaf):
      return path[0].key == "enc"

  refs = [weakref.ref(Trainer()) for _ in range(3)]
  gc.collect()
  assert all(r() is None for r in refs)


_TAKES_PRECISION = sorted(
    name for name, info in cg.registry.methods().items()
    if "precision" in inspect.signature(info.factory).parameters)


def test_every_method_with_a_precision_option_is_covered():
  assert len(_TAKES_PRECISION) >= 30, _TAKES_PRECISION


@pytest.mark.parametrize("name", _TAKES_PRECISION)
def test_an_unknown_precision_is_refused_at_construction(name):
  factory = cg.registry.methods()[name].factory
  with pytest.raises(ValueError, match="`precision` must be a matmul precision"):
    factory(precision="bogus")
  factory(precision="highest")            # a valid one is accepted
  factory(precision=jax.lax.Precision.HIGH)


def test_building_a_method_starts_no_backend():
  """A method may be built before jax.distributed.initialize(), which must come before any
  backend starts: construction checks its options on abstract values only."""
  import subprocess
  import sys
  code = ("import conicgrad_jax as cg\n"
          "from jax._src import xla_bridge\n"
          "cg.conicgrad(0.5, num_tasks=2, precision='highest'); cg.with_diagnostics(cg.mgda())\n"
          "for info in cg.methods().values(): info.factory(num_tasks=3)\n"
          "cg.skip_nonfinite(cg.pcgrad(num_tasks=3)); cg.accumulate_task_grads(cg.rlw(), 2, num_tasks=3)\n"
          "print(xla_bridge.backends_are_initialized())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.split()[-1] == "False", out.stdout + out.stderr


def test_a_precision_the_backend_does_not_run_is_named_at_the_first_compilation():
  if jax.default_backend() != "cpu":
    pytest.skip("TF32 is an algorithm of accelerators; XLA:CPU refuses it")
  tx = cg.imtl_g(precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32)
  with pytest.raises(ValueError, match="TF32_TF32_F32"):
    jax.jit(tx.update)({"w": jnp.eye(2, 3)}, tx.init(None))


def test_with_diagnostics_refuses_an_unknown_precision():
  with pytest.raises(ValueError, match="`precision` must be a matmul precision"):
    cg.with_diagnostics(cg.mgda(), precision="bogus")


_K3 = jnp.ones(3)
_LOSS_HELPERS = [
    ("imtl_l_loss", lambda l, v: cg.imtl_l_loss(l, v), "log_scales"),
    ("uncertainty_weighting_loss", lambda l, v: cg.uncertainty_weighting_loss(l, v),
     "log_scales"),
    ("famo_loss", lambda l, v: cg.famo_loss(l, v), "logits"),
    ("famo_loss", lambda l, v: cg.famo_loss(l, _K3 if l.ndim == 1 else l, v), "min_losses"),
    ("bilb4mtl_loss", lambda l, v: cg.bilb4mtl_loss(l, v, _K3 if l.ndim == 1 else l),
     "logits"),
    ("bilb4mtl_loss", lambda l, v: cg.bilb4mtl_loss(l, _K3 if l.ndim == 1 else l, v),
     "initial_losses"),
    ("cosmos_loss", lambda l, v: cg.cosmos_loss(l, v), "preference"),
    ("gsmgrad_fa_loss", lambda l, v: cg.gsmgrad_fa_loss(l, v), "weights"),
    ("pbi_loss", lambda l, v: cg.pbi_loss(l, v), "preference"),
    ("pbi_loss", lambda l, v: cg.pbi_loss(l, _K3 if l.ndim == 1 else l, reference=v),
     "reference"),
    ("stch_loss", lambda l, v: cg.stch_loss(l, v), "nadir"),
]


@pytest.mark.parametrize("function, call, name", _LOSS_HELPERS)
def test_loss_helpers_name_an_argument_of_the_wrong_length(function, call, name):
  with pytest.raises(ValueError, match=rf"{function}: `{name}` has shape \(2,\); expected \(3,\)"):
    call(_K3, jnp.ones(2))


@pytest.mark.parametrize("function, call, name", _LOSS_HELPERS)
def test_loss_helpers_refuse_losses_that_are_not_a_vector(function, call, name):
  del name
  with pytest.raises(ValueError, match=rf"{function}: `losses` must be a vector of K entries"):
    call(jnp.ones((3, 2)), jnp.ones((3, 2)))


def test_single_argument_loss_helpers_refuse_a_matrix():
  for helper in (cg.gls_loss, cg.scale_invariant_ls_loss):
    with pytest.raises(ValueError, match="`losses` must be a vector"):
      helper(jnp.ones((3, 2)))


def test_famo_loss_takes_a_scalar_floor_and_the_balance_loss_names_its_vectors():
  # Scalars broadcast where they mean "the same for every task": each call with a scalar
  # equals the call with that value repeated for every task.
  losses, logits, pref = jnp.array([0.5, 1.2, 2.0]), jnp.array([0.1, -0.2, 0.3]), \
      jnp.array([0.2, 0.3, 0.5])
  full = lambda v: jnp.full(3, v)
  pairs = [
      (cg.famo_loss(losses, logits, 0.3), cg.famo_loss(losses, logits, full(0.3))),
      (cg.stch_loss(losses, 0.4), cg.stch_loss(losses, full(0.4))),
      (cg.pbi_loss(losses, pref, 5.0, 0.1), cg.pbi_loss(losses, pref, 5.0, full(0.1))),
      (cg.uncertainty_weighting_loss(losses, 0.2),
       cg.uncertainty_weighting_loss(losses, full(0.2))),
      (cg.imtl_l_loss(losses, 0.2), cg.imtl_l_loss(losses, full(0.2))),
      (cg.bilb4mtl_loss(losses, logits, 1.5), cg.bilb4mtl_loss(losses, logits, full(1.5))),
      (cg.gsmgrad_fa_loss(losses, 0.5), cg.gsmgrad_fa_loss(losses, full(0.5))),
  ]
  for i, (scalar, vector) in enumerate(pairs):
    assert np.isfinite(float(vector)), i
    assert float(scalar) == pytest.approx(float(vector), rel=1e-6), i
  with pytest.raises(ValueError, match=r"famo_loss: `logits` has shape \(\); expected \(3,\)"):
    cg.famo_loss(_K3, jnp.asarray(0.0))
  from conicgrad_jax.methods import gradnorm
  with pytest.raises(ValueError, match=r"gradnorm_balance_loss: `ratio` has shape \(\)"):
    gradnorm.gradnorm_balance_loss(jnp.zeros(3), _K3, jnp.asarray(1.0))


@pytest.mark.parametrize("name", sorted(cg.registry.methods()))
def test_a_state_made_by_another_method_is_named(name):
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.ones((3, 4))}
  factory = cg.registry.methods()[name].factory
  tx = factory(**({"num_tasks": 3} if "num_tasks" in inspect.signature(factory).parameters
                  else {}))
  own = type(tx.init(params))
  donor = cg.famo() if own is not type(cg.famo().init(params)) else cg.conicgrad(0.5)
  foreign = donor.init(params)
  with pytest.raises(ValueError, match=rf"state is a {type(foreign).__name__}, but this "
                                       rf"method's state is a {own.__name__}"):
    tx.update(grads, foreign, params)


@pytest.mark.parametrize("method, donor", [("upgrad", "mgda"), ("mgda", "upgrad")])
def test_a_state_of_the_same_type_that_does_not_fit_is_named(method, donor):
  """MGDA and UPGrad share a state type, but not its shapes: the leaf is named."""
  params = {"w": jnp.zeros(4)}
  tx = cg.registry.methods()[method].factory(num_tasks=3)
  foreign = cg.registry.methods()[donor].factory(num_tasks=3).init(params)
  with pytest.raises(ValueError, match=r"state\.previous\.x has shape .* but this method's "
                                       r"state for these task gradients has"):
    tx.update({"w": jnp.ones((3, 4))}, foreign, params)


def test_a_state_made_for_other_parameters_is_named():
  tx = cg.moco(num_tasks=3)
  with pytest.raises(ValueError, match=r"state\.buffers\[0\] has shape \(3, 5\).*\(3, 4\)"):
    tx.update({"w": jnp.ones((3, 4))}, tx.init({"w": jnp.zeros(5)}), {"w": jnp.zeros(4)})


def test_with_diagnostics_names_a_state_of_the_bare_method():
  params = {"w": jnp.zeros(4)}
  tx = cg.with_diagnostics(cg.mgda())
  with pytest.raises(ValueError, match="state is a WarmGramMethodState, but this method's "
                                       "state is a DiagnosticsState"):
    tx.update({"w": jnp.ones((3, 4))}, cg.mgda().init(params), params)


@pytest.mark.parametrize("name", ["mgda", "conicgrad", *[
    pytest.param(n, marks=pytest.mark.slow)
    for n in ("upgrad", "dualproj", "cagrad", "nash_mtl", "fairgrad")]])
def test_a_traced_max_iter_works(name):
  """optax traces every number it is given, a default max_iter included; it is a loop bound."""
  import optax
  factory = cg.registry.methods()[name].factory
  static = tuple(p for p in inspect.signature(factory).parameters if p != "max_iter")
  tx = optax.inject_hyperparams(factory, static_args=static)(max_iter=50, num_tasks=2)
  grads = {"w": jnp.array([[1.0, 0.0, 0.0], [-0.5, 1.0, 0.0]])}
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(2):                     # the second step starts warm
    updates, state = step(grads, state, params)
  assert np.all(np.isfinite(np.asarray(updates["w"])))
  assert np.any(np.asarray(updates["w"]) != 0)


_G3 = jnp.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("call, name", [
    (lambda: upgrad_m.upgrad_weighting(_G3, preference=jnp.zeros(3)), "preference"),
    (lambda: dualproj_m.dualproj_weighting(_G3, preference=jnp.array([1.0, -1.0, 1.0])),
     "preference"),
    (lambda: aligned_mtl_m.aligned_mtl_weighting(_G3, preference=jnp.array([1.0, -1.0, 0.0])),
     "preference"),
    (lambda: upgrad_m.upgrad_weighting(_G3, preference=jnp.ones(2)), "preference"),
    (lambda: krum_m.krum_weighting(_G3, -1), "n_byzantine"),
    (lambda: krum_m.krum_weighting(_G3, 0, 0), "n_selected"),
    (lambda: cagrad_m.cagrad_weighting(_G3, -1.0), "`c`"),
    (lambda: fairgrad_m.fairgrad_weighting(_G3, 0.0), "alpha"),
])
def test_the_weighting_functions_check_their_options(call, name):
  """The functional forms name a bad option as their factories do (a zero preference
  gave NaN weights, FairGrad's α = 0 a ZeroDivisionError)."""
  with pytest.raises(ValueError, match=name):
    call()


def test_structure_mismatch_names_extra_and_further_missing_key_paths():
  params = {"a": jnp.ones(3), "b": jnp.ones(2), "c": jnp.ones(1), "d": jnp.ones(1),
            "e": jnp.ones(1)}
  with pytest.raises(ValueError, match=r"missing 4 key path\(s\) of `params`: \['b'\], "
                     r"\['c'\], \['d'\] \(and 1 more\); 1 extra key path\(s\): \['z'\]\."):
    _update({"a": jnp.ones((2, 3)), "z": jnp.ones((2, 1))}, params)


def test_structure_mismatch_with_the_same_key_paths_names_the_containers():
  message = validation.structure_mismatch([jnp.ones(2)], (jnp.ones(2),), "`a`", "`b`")
  assert "the key paths agree but the containers differ (list vs tuple)" in message


def test_task_gradients_with_an_empty_task_axis_are_refused():
  with pytest.raises(ValueError, match=r"no task axis \(K = 0\)"):
    _update({"a": jnp.ones((0, 3))})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_nonfinite_preference_is_named(bad):
  with pytest.raises(ValueError, match="preference"):
    conicgrad(0.5, preference=[bad, 1.0])
  with pytest.raises(ValueError, match="preference"):
    cg.upgrad(preference=[1.0, bad, 1.0])


def test_a_mask_entry_that_matches_no_leaf_is_named():
  grads = {"enc": jnp.ones((2, 3)), "heads": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match=r"1 entry\(ies\) matching no leaf: \['decoder'\]"):
    _update(grads, shared={"enc": True, "heads": False, "decoder": False})


def test_boolean_integer_options_are_refused():
  with pytest.raises(ValueError, match="every"):
    cg.make_task_update(lambda p, x: x, cg.conicgrad(0.5, num_tasks=2), every=True)
  with pytest.raises(ValueError, match="seed"):
    cg.pcgrad(seed=True)
  with pytest.raises(ValueError, match="chunk_size"):
    cg.make_task_update(lambda p, x: x, cg.conicgrad(0.5), mode="chunked", chunk_size=0)
