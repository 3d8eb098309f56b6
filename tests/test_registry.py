"""Every registered method follows the same factory conventions (optax's house style)."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import conicgrad_jax as cg

METHODS = sorted(cg.methods())


def test_the_registry_holds_every_method_once():
  assert len(METHODS) == 39
  assert len({info.factory for info in cg.methods().values()}) == 39
  # Each name holds the factory of that name (two swapped entries with equal flags would
  # pass the count).
  for name, info in cg.methods().items():
    assert info.factory is getattr(cg, name) and info.factory.__name__ == name, name


@pytest.mark.parametrize("name", METHODS)
def test_factory_signature_and_docstring(name):
  """At most one positional option (the method's main one), the rest keyword-only; a
  Google-style docstring with Args, Returns, an example and references."""
  factory = cg.methods()[name].factory
  params = inspect.signature(factory).parameters.values()
  positional = [p.name for p in params
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
  assert len(positional) <= 1, positional
  assert all(p.default is not inspect.Parameter.empty for p in params), name
  doc = inspect.getdoc(factory)
  for section in ("Args:", "Returns:", "Example:", "References:"):
    assert section in doc, (name, section)
  assert ">>> " in doc.split("Example:")[1], name


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in ("famo", "graddrop", "mgda") else pytest.mark.slow)
    for n in METHODS])
def test_update_accepts_and_ignores_unknown_keyword_arguments(name):
  """A training step may pass the same extra keywords to every method: they change nothing."""
  factory = cg.methods()[name].factory
  kwargs = {"num_tasks": 2} if "num_tasks" in inspect.signature(factory).parameters else {}
  tx = factory(**kwargs)
  params = {"w": jnp.zeros(3)}
  grads = {"w": jnp.asarray([[1.0, 0.5, -0.2], [-0.3, 1.0, 0.4]])}
  losses = jnp.asarray([0.5, 1.5])
  state = tx.init(params)
  plain = tx.update(grads, state, params, losses=losses)
  extra = tx.update(grads, state, params, losses=losses, some_other_option=np.ones(4), step=3)
  assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(extra)
  for a, b in zip(jax.tree_util.tree_leaves(plain), jax.tree_util.tree_leaves(extra)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _registry_problem(seed, order=(0, 1, 2)):
  """Conflicting task gradients (tasks 1, 2 against task 0) on two leaves, rows in ``order``."""
  rng = np.random.default_rng(seed)
  J = rng.standard_normal((3, 10)) * np.array([[1.0], [2.0], [0.5]])
  J[1:] -= 1.5 * J[0]
  J = J[list(order)]
  grads = {"a": jnp.asarray(J[:, :4], jnp.float32),
           "b": jnp.asarray(J[:, 4:].reshape(3, 2, 3), jnp.float32)}
  return grads, jnp.asarray(rng.uniform(0.5, 2.0, 3), jnp.float32)


# Options under which a stateful method's state matters within a few steps.
_EARLY_STATE = {"dwa": dict(window=1), "nash_mtl": dict(update_weights_every=2),
                "stch": dict(warmup_steps=2),
                "sdmgrad": dict(lr=0.1, niter=2)}   # few short steps from the previous w


@pytest.mark.slow   # several compiled updates of every method
@pytest.mark.parametrize("name", METHODS)
def test_the_registry_flags_match_what_the_method_does(name):
  """MethodInfo's flags against the method: needs_losses, loss_only and stateful by its
  behaviour on small problems, needs_jacobian by its type, random by the key in its
  state, and gram_weighting as the Gram methods: neither loss-only nor Jacobian."""
  from conicgrad_jax import aggregator
  info = cg.methods()[name]
  tx = info.factory(num_tasks=3)
  params = {"a": jnp.zeros(4), "b": jnp.zeros((2, 3))}
  update = jax.jit(tx.update)
  grads, losses = _registry_problem(0)
  fresh = tx.init(params)
  # needs_losses: without `losses=` the update is refused, naming them.
  if info.needs_losses:
    with pytest.raises(ValueError, match="losses"):
      update(grads, fresh, params)
  else:
    update(grads, fresh, params)
  assert isinstance(tx, aggregator.JacobianTransformation) == info.needs_jacobian
  assert ("key" in type(fresh)._fields) == info.random
  assert not (info.gram_weighting and info.needs_jacobian)
  # loss_only: the weights never see the gradients. From the same state, two steps with
  # the same losses and the tasks' gradients permuted give the same weights (two, since
  # some methods apply weights learned from the previous step's gradients).
  _, state = update(grads, fresh, params, losses=losses)
  s1 = s2 = state
  permuted = _registry_problem(0, order=(1, 2, 0))[0]
  for _ in range(2):
    s1 = update(grads, s1, params, losses=losses)[1]
    s2 = update(permuted, s2, params, losses=losses)[1]
  same = np.allclose(np.asarray(s1.weights), np.asarray(s2.weights), rtol=1e-5, atol=1e-7)
  assert same == info.loss_only, (np.asarray(s1.weights), np.asarray(s2.weights))
  # stateful: after three earlier steps the same inputs give another update (a random
  # method's key advances anyway, so only the others are checked).
  if not info.random:
    tx = info.factory(num_tasks=3, **_EARLY_STATE.get(name, {}))
    update, fresh = jax.jit(tx.update), tx.init(params)
    state = fresh
    for seed in (2, 3, 4):
      g, l = _registry_problem(seed)
      _, state = update(g, state, params, losses=l * (1 + seed))
    u_fresh, _ = update(grads, fresh, params, losses=losses)
    u_later, _ = update(grads, state, params, losses=losses)
    moved = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-12))
                for a, b in zip(jax.tree_util.tree_leaves(u_fresh),
                                jax.tree_util.tree_leaves(u_later)))
    assert (moved > 1e-3) == info.stateful, moved
