"""Registry-wide checks for the methods whose own test module does not run them: degenerate inputs, optax contract.

The Gram-weighting methods (mgda, cagrad, upgrad, dualproj, nash_mtl,
fairgrad, imtl_g, aligned_mtl, config, pcgrad, gradvac) are tested in
tests/methods/test_<name>.py with the checks of ``_common``.
"""

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
