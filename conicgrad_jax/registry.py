"""Every method of the library with its kind, so benchmarks and users can loop over them."""

from __future__ import annotations

from typing import Callable, NamedTuple

from conicgrad_jax.methods import adaptive
from conicgrad_jax.methods import bargaining
from conicgrad_jax.methods import conicgrad as conicgrad_m
from conicgrad_jax.methods import jacobian
from conicgrad_jax.methods import loss_weighting
from conicgrad_jax.methods import min_norm
from conicgrad_jax.methods import mtac_ca as mtac_ca_m
from conicgrad_jax.methods import mtac_fc as mtac_fc_m
from conicgrad_jax.methods import projection
from conicgrad_jax.methods import rotograd as rotograd_m
from conicgrad_jax.methods import scalarization
from conicgrad_jax.methods import stochastic


class MethodInfo(NamedTuple):
  """A method's factory and kind.

  Attributes:
    factory: returns the ``optax.GradientTransformationExtraArgs``.
    gram_weighting: its weights are a function of the Gram matrix alone.
    needs_jacobian: it needs the task gradients themselves, not only G.
    needs_losses: ``update`` needs ``losses=`` (or may use them).
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
    "mgda": MethodInfo(min_norm.mgda, True, False, True, False, False),
    "cagrad": MethodInfo(min_norm.cagrad, True, False, False, False, False),
    "upgrad": MethodInfo(min_norm.upgrad, True, False, False, False, False),
    "dualproj": MethodInfo(min_norm.dualproj, True, False, False, False, False),
    "nash_mtl": MethodInfo(bargaining.nash_mtl, True, False, False, True, False),
    "fairgrad": MethodInfo(bargaining.fairgrad, True, False, False, False, False),
    "imtl_g": MethodInfo(projection.imtl_g, True, False, False, False, False),
    "aligned_mtl": MethodInfo(projection.aligned_mtl, True, False, False, False, False),
    "config": MethodInfo(projection.config, True, False, False, False, False),
    "pcgrad": MethodInfo(stochastic.pcgrad, True, False, False, False, True),
    "gradvac": MethodInfo(stochastic.gradvac, True, False, False, True, True),
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
    # MTAC-CA with steps=1 and no weight_grads is gsmgrad(warm_start_steps=1).
    "mtac_ca": MethodInfo(mtac_ca_m.mtac_ca, True, False, False, True, False),
    "mtac_fc": MethodInfo(mtac_fc_m.mtac_fc, True, False, False, True, False),
}


def methods() -> dict[str, MethodInfo]:
  """Name → :class:`MethodInfo` for every method in the library."""
  return dict(_METHODS)
