"""Bad input raises ValueError at construction or trace time, naming what is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conicgrad_jax import conicgrad, value_and_task_grads


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
  with pytest.raises(ValueError, match=r"\['a'\].*`num_tasks` is 4"):
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


def test_state_for_a_different_k():
  tx = conicgrad(0.5, num_tasks=2)
  state = tx.init(None)
  with pytest.raises(ValueError, match="2 tasks|every leaf needs the same K"):
    tx.update({"a": jnp.ones((3, 4))}, state)


def test_preference_length_checked_against_k_at_trace_time():
  tx = conicgrad(0.5, preference=np.ones(3))
  with pytest.raises(ValueError, match="`num_tasks` is 3"):
    tx.update({"a": jnp.ones((2, 4))}, tx.init(None))


def test_task_grads_helper_requires_vector_losses():
  f = value_and_task_grads(lambda p: jnp.sum(p["w"]))
  with pytest.raises(ValueError, match="1-D vector of task losses"):
    f({"w": jnp.ones(3)})
