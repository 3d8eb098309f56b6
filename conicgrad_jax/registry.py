"""Every method of the library with its kind, so benchmarks and users can loop over them."""

from __future__ import annotations

from typing import Callable, NamedTuple

from conicgrad_jax.methods import adaptive
from conicgrad_jax.methods import aligned_mtl as aligned_mtl_m
from conicgrad_jax.methods import cagrad as cagrad_m
from conicgrad_jax.methods import config as config_m
from conicgrad_jax.methods import conicgrad as conicgrad_m
from conicgrad_jax.methods import dualproj as dualproj_m
from conicgrad_jax.methods import fairgrad as fairgrad_m
from conicgrad_jax.methods import gradvac as gradvac_m
from conicgrad_jax.methods import imtl_g as imtl_g_m
from conicgrad_jax.methods import jacobian
from conicgrad_jax.methods import loss_weighting
from conicgrad_jax.methods import mgda as mgda_m
from conicgrad_jax.methods import nash_mtl as nash_mtl_m
from conicgrad_jax.methods import pcgrad as pcgrad_m
from conicgrad_jax.methods import rotograd as rotograd_m
from conicgrad_jax.methods import scalarization
from conicgrad_jax.methods import stochastic
from conicgrad_jax.methods import upgrad as upgrad_m


class MethodInfo(NamedTuple):
  """A method's factory and kind.

  Attributes:
    factory: returns the ``optax.GradientTransformationExtraArgs``.
    gram_weighting: its weights are a function of the Gram matrix alone.
    needs_jacobian: it needs the task gradients themselves, not only G.
    needs_losses: ``update`` needs ``losses=`` with its default options
      (some methods use them only with certain options, e.g. MGDA's "loss"
      normalisations).
    stateful: its state carries more than logs between steps.
    random: it draws random numbers (key kept in its state).
  """
  factory: Callable
  gram_weighting: bool
  needs_jacobian: bool
  needs_losses: bool
  stateful: bool
  random: bool

  @property
  def loss_only(self) -> bool:
    """Its weights never see the gradients (loss weightings, fixed or random weights).

    Its update is then one backward pass of Σ_k w_k L_k, e.g. with
    ``make_task_update(mode="representation")``.
    """
    return not (self.gram_weighting or self.needs_jacobian)


_METHODS = {
    "conicgrad": MethodInfo(conicgrad_m.conicgrad, True, False, False, False, False),
    "linear_scalarization": MethodInfo(scalarization.linear_scalarization, False, False, False,
                                       False, False),
    "rlw": MethodInfo(stochastic.rlw, False, False, False, False, True),
    "mgda": MethodInfo(mgda_m.mgda, True, False, False, False, False),
    "cagrad": MethodInfo(cagrad_m.cagrad, True, False, False, False, False),
    "upgrad": MethodInfo(upgrad_m.upgrad, True, False, False, False, False),
    "dualproj": MethodInfo(dualproj_m.dualproj, True, False, False, False, False),
    "nash_mtl": MethodInfo(nash_mtl_m.nash_mtl, True, False, False, True, False),
    "fairgrad": MethodInfo(fairgrad_m.fairgrad, True, False, False, False, False),
    "imtl_g": MethodInfo(imtl_g_m.imtl_g, True, False, False, False, False),
    "aligned_mtl": MethodInfo(aligned_mtl_m.aligned_mtl, True, False, False, False, False),
    "config": MethodInfo(config_m.config, True, False, False, False, False),
    "pcgrad": MethodInfo(pcgrad_m.pcgrad, True, False, False, False, True),
    "gradvac": MethodInfo(gradvac_m.gradvac, True, False, False, True, True),
    "gradnorm": MethodInfo(adaptive.gradnorm, True, False, True, True, False),
    "sdmgrad": MethodInfo(adaptive.sdmgrad, True, False, False, True, False),
    "gsmgrad": MethodInfo(adaptive.gsmgrad, True, False, False, True, False),
    "gsmgrad_fa": MethodInfo(adaptive.gsmgrad_fa, False, False, True, True, False),
    "rotograd": MethodInfo(rotograd_m.rotograd, True, False, False, True, False),
    "graddrop": MethodInfo(jacobian.graddrop, False, True, False, False, True),
    "moco": MethodInfo(jacobian.moco, False, True, True, True, False),
    "db_mtl": MethodInfo(jacobian.db_mtl, False, True, True, True, False),
    "uncertainty_weighting": MethodInfo(loss_weighting.uncertainty_weighting, False, False,
                                        True, True, False),
    "dwa": MethodInfo(loss_weighting.dwa, False, False, True, True, False),
    "gls": MethodInfo(loss_weighting.gls, False, False, True, False, False),
    "stch": MethodInfo(loss_weighting.stch, False, False, True, True, False),
    "imtl_l": MethodInfo(loss_weighting.imtl_l, False, False, True, True, False),
    "famo": MethodInfo(loss_weighting.famo, False, False, True, True, False),
    "bilb4mtl": MethodInfo(loss_weighting.bilb4mtl, False, False, True, True, False),
}


def methods() -> dict[str, MethodInfo]:
  """Name → :class:`MethodInfo` for every method in the library."""
  return dict(_METHODS)
