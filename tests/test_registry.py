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
