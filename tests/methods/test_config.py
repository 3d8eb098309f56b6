"""config: equal cosines between the update and every task gradient, its length, contract."""

import jax
import numpy as np
import pytest

import _common
import conicgrad_jax as cg
from conicgrad_jax.methods import config as config_m


def test_published_values():
  _common.check_published(cg.config, [0.1588, 2.0706, 2.0706])


def test_config_equalises_cosines():
  J = _common.random_J(3, k=3, m=6)
  c, _ = _common.x64(jax.jit(config_m.config_weighting), J @ J.T)
  d = J.T @ c
  cos = (J @ d) / np.linalg.norm(J, axis=1) / np.linalg.norm(d)
  np.testing.assert_allclose(cos, cos[0], rtol=1e-8)
  assert cos[0] > 0
  assert np.linalg.norm(d) == pytest.approx(np.sum(J @ d) / np.linalg.norm(d), rel=1e-8)


def test_degenerate_inputs_give_finite_updates():
  _common.check_degenerate_inputs(cg.config)


def test_optax_contract():
  _common.check_optax_contract(cg.config)
