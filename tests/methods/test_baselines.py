"""Registry-wide checks for the methods whose own test module does not run them: degenerate inputs, optax contract.

The Gram-weighting methods (mgda, cagrad, upgrad, dualproj, nash_mtl,
fairgrad, imtl_g, aligned_mtl, config, pcgrad, gradvac) are tested in
tests/methods/test_<name>.py with the checks of ``_common``.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import _common
import conicgrad_jax as cg

# torchjd's documented outputs on J_PUBLISHED; our settings that reproduce its conventions.
PUBLISHED = {
    "linear_scalarization": (dict(), [1.0, 1.0, 1.0]),
}

# Methods whose own module (tests/methods/test_<name>.py) runs the checks below.
OWN_TEST_MODULE = ("mgda", "cagrad", "upgrad", "dualproj", "nash_mtl", "fairgrad", "imtl_g",
                   "aligned_mtl", "config", "pcgrad", "gradvac")


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_values(name):
  kwargs, expected = PUBLISHED[name]
  _common.check_published(cg.methods()[name].factory, expected, **kwargs)


# By default the methods of each kind (a solver, a loss weighting, a Jacobian method, a
# random one); every other one under -m slow.
_DEGENERATE_BY_DEFAULT = ("conicgrad", "famo", "graddrop", "moco", "rlw", "db_mtl")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in _DEGENERATE_BY_DEFAULT else pytest.mark.slow)
    for n in sorted(set(cg.methods()) - set(OWN_TEST_MODULE))])
def test_degenerate_inputs_give_finite_updates(name):
  info = cg.methods()[name]
  _common.check_degenerate_inputs(info.factory, needs_losses=info.needs_losses)


@pytest.mark.parametrize("name", sorted(set(cg.methods()) - set(OWN_TEST_MODULE)))
def test_optax_contract(name):
  _common.check_optax_contract(cg.methods()[name].factory)


def test_registry_kinds():
  registry = cg.methods()
  assert "conicgrad" in registry and registry["conicgrad"].gram_weighting
  assert registry["rlw"].random and registry["pcgrad"].random
  assert not registry["mgda"].needs_losses and registry["nash_mtl"].stateful
  assert not registry["linear_scalarization"].gram_weighting
  assert registry["gsmgrad"].gram_weighting and registry["gsmgrad"].stateful
  assert registry["gsmgrad_fa"].needs_losses and not registry["gsmgrad_fa"].gram_weighting
  assert registry["rotograd"].gram_weighting and registry["rotograd"].stateful
  assert len(registry) == 39
  assert registry["krum"].gram_weighting and registry["modo"].stateful
  assert registry["cr_mogm"].gram_weighting and registry["cr_mogm"].stateful
  assert registry["excess_mtl"].needs_jacobian and registry["trimmed_mean"].needs_jacobian
  assert all(registry[n].loss_only for n in ("cosmos", "pbi", "scale_invariant_ls"))
  assert registry["mtac_ca"].gram_weighting and registry["mtac_ca"].stateful
  assert registry["famo"].loss_only and registry["rlw"].loss_only
  assert not registry["gradnorm"].loss_only and not registry["graddrop"].loss_only


# The defaults each factory's signature and docstring give (the references' where the
# docstring names one: cr_mogm, modo and excess_mtl torchjd's, dwa T = 2 and window 25
# (Nash-MTL's code), famo γ = 1e-3 and w_lr = 0.025 (LibMTL's); the others, this
# library's), a value of each option that changes the updates, and options every call
# gets (a window of 1 lets DWA's temperature act within five steps).
_DEFAULTS = {
    "mtac_ca": (dict(lr=0.5, rho=0.01, steps=1), dict(lr=0.1, rho=0.1, steps=2), {}),
    "mtac_fc": (dict(lr=0.1), dict(lr=0.5), {}),
    "gsmgrad": (dict(lr=0.5, rho=0.01, warm_start_steps=100),
                dict(lr=0.1, rho=0.1, warm_start_steps=1), {}),
    "gsmgrad_fa": (dict(lr=0.1, rho=0.01), dict(lr=0.5, rho=1.0), {}),
    "modo": (dict(gamma=0.1, rho=0.1), dict(gamma=1e-3, rho=0.01), {}),
    "cr_mogm": (dict(inner=None, alpha=0.9), dict(inner=cg.imtl_g(), alpha=0.5), {}),
    "dwa": (dict(temperature=2.0), dict(temperature=1.0), dict(window=1)),
    "famo": (dict(gamma=1e-3, w_lr=0.025), dict(gamma=100.0, w_lr=0.01), {}),
    "imtl_l": (dict(lr=1e-3), dict(lr=1e-2), {}),
    "excess_mtl": (dict(robust_step_size=1.0), dict(robust_step_size=0.5), dict(num_tasks=3)),
}


def _updates(tx, Js, losses):
  state, out = tx.init({"w": Js[0, 0]}), []
  for J, loss in zip(Js, losses):
    u, state = tx.update({"w": J}, state, {"w": Js[0, 0]}, losses=loss)
    out.append(np.asarray(u["w"]))
  return np.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_DEFAULTS))
def test_defaults_are_the_documented_ones(name):
  """factory() updates as the factory given its documented defaults (cr_mogm: around
  MGDA), and each option's other value changes the updates, one option at a time."""
  defaults, others, fixed = _DEFAULTS[name]
  factory = cg.methods()[name].factory
  rng = np.random.default_rng(7)
  Js = jnp.asarray(rng.standard_normal((5, 3, 6)), jnp.float32)     # 5 steps, K = 3
  losses = jnp.asarray(rng.uniform(0.5, 2.0, (5, 3)), jnp.float32)
  explicit = dict(defaults, inner=cg.mgda()) if name == "cr_mogm" else defaults
  base = _updates(factory(**fixed), Js, losses)
  np.testing.assert_allclose(base, _updates(factory(**explicit, **fixed), Js, losses),
                             rtol=1e-5, atol=1e-6)
  for option, value in others.items():
    changed = _updates(factory(**dict(explicit, **{option: value}), **fixed), Js, losses)
    assert np.max(np.abs(changed - base)) > 1e-3 * np.max(np.abs(base)), option
  if name == "dwa":                  # two windows of 25 loss vectors
    assert cg.dwa(num_tasks=3).init(None).history.shape == (50, 3)


_WARM_STARTED = ("mgda", "upgrad", "cagrad", "dualproj", "nash_mtl", "fairgrad")


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=() if n in ("mgda", "upgrad") else pytest.mark.slow)
    for n in _WARM_STARTED])
def test_warm_start_false_solves_every_step_from_scratch(name):
  """With ``warm_start=False`` the second of two close problems takes the Newton steps of a
  fresh solve; with the default, the previous solution saves some (so the check can fail)."""
  import jax
  factory = cg.methods()[name].factory
  rng = np.random.default_rng(11)
  J1 = rng.standard_normal((4, 9))
  J1[1:] -= 0.6 * J1[0]
  J2 = J1 + 0.01 * rng.standard_normal(J1.shape)
  steps = {}
  for warm in (False, True):
    tx = factory(num_tasks=4, warm_start=warm)
    update = jax.jit(tx.update)
    _, state = update({"w": jnp.asarray(J1, jnp.float32)}, tx.init(None))
    _, second = update({"w": jnp.asarray(J2, jnp.float32)}, state)
    _, fresh = update({"w": jnp.asarray(J2, jnp.float32)}, tx.init(None))
    steps[warm] = int(second.info.iterations), int(fresh.info.iterations)
  assert steps[False][0] == steps[False][1], steps
  assert steps[True][0] < steps[True][1], steps
