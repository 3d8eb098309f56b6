"""Every method of the library with its kind, so benchmarks and users can loop over them."""

from __future__ import annotations

from typing import Callable, NamedTuple

from conicgrad_jax.methods.aligned_mtl import aligned_mtl
from conicgrad_jax.methods.bilb4mtl import bilb4mtl
from conicgrad_jax.methods.cagrad import cagrad
from conicgrad_jax.methods.config import config
from conicgrad_jax.methods.conicgrad import conicgrad
from conicgrad_jax.methods.db_mtl import db_mtl
from conicgrad_jax.methods.dualproj import dualproj
from conicgrad_jax.methods.dwa import dwa
from conicgrad_jax.methods.fairgrad import fairgrad
from conicgrad_jax.methods.famo import famo
from conicgrad_jax.methods.gls import gls
from conicgrad_jax.methods.graddrop import graddrop
from conicgrad_jax.methods.gradnorm import gradnorm
from conicgrad_jax.methods.gradvac import gradvac
from conicgrad_jax.methods.gsmgrad import gsmgrad
from conicgrad_jax.methods.gsmgrad_fa import gsmgrad_fa
from conicgrad_jax.methods.imtl_g import imtl_g
from conicgrad_jax.methods.imtl_l import imtl_l
from conicgrad_jax.methods.linear_scalarization import linear_scalarization
from conicgrad_jax.methods.mgda import mgda
from conicgrad_jax.methods.moco import moco
from conicgrad_jax.methods.nash_mtl import nash_mtl
from conicgrad_jax.methods.pcgrad import pcgrad
from conicgrad_jax.methods.rlw import rlw
from conicgrad_jax.methods.rotograd import rotograd
from conicgrad_jax.methods.sdmgrad import sdmgrad
from conicgrad_jax.methods.stch import stch
from conicgrad_jax.methods.uncertainty_weighting import uncertainty_weighting
from conicgrad_jax.methods.upgrad import upgrad
from conicgrad_jax.methods.cosmos import cosmos
from conicgrad_jax.methods.cr_mogm import cr_mogm
from conicgrad_jax.methods.excess_mtl import excess_mtl
from conicgrad_jax.methods.krum import krum
from conicgrad_jax.methods.modo import modo
from conicgrad_jax.methods.mtac_ca import mtac_ca
from conicgrad_jax.methods.mtac_fc import mtac_fc
from conicgrad_jax.methods.pbi import pbi
from conicgrad_jax.methods.scale_invariant_ls import scale_invariant_ls
from conicgrad_jax.methods.trimmed_mean import trimmed_mean


class MethodInfo(NamedTuple):
  """A method's factory and kind.

  Attributes:
    factory: returns the ``optax.GradientTransformationExtraArgs``.
    gram_weighting: its weights are a function of the Gram matrix alone.
    needs_jacobian: it needs the task gradients themselves, not only G.
    needs_losses: ``update`` needs ``losses=`` with the factory's default
      options (some methods use them only with certain options, e.g. MGDA's
      "loss" normalisations, and are not flagged).
    stateful: its update depends on what its state carries from earlier
      steps (moving averages, learned weights, a schedule). A warm start
      (ConicGrad, MGDA, UPGrad, ...) does not count: it moves only the
      solver's starting point, and the answer is certified to the same
      tolerance with or without it.
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
    "conicgrad": MethodInfo(conicgrad, True, False, False, False, False),
    "linear_scalarization": MethodInfo(linear_scalarization, False, False, False, False, False),
    "rlw": MethodInfo(rlw, False, False, False, False, True),
    "mgda": MethodInfo(mgda, True, False, False, False, False),
    "cagrad": MethodInfo(cagrad, True, False, False, False, False),
    "upgrad": MethodInfo(upgrad, True, False, False, False, False),
    "dualproj": MethodInfo(dualproj, True, False, False, False, False),
    "nash_mtl": MethodInfo(nash_mtl, True, False, False, True, False),
    "fairgrad": MethodInfo(fairgrad, True, False, False, False, False),
    "imtl_g": MethodInfo(imtl_g, True, False, False, False, False),
    "aligned_mtl": MethodInfo(aligned_mtl, True, False, False, False, False),
    "config": MethodInfo(config, True, False, False, False, False),
    "pcgrad": MethodInfo(pcgrad, True, False, False, False, True),
    "gradvac": MethodInfo(gradvac, True, False, False, True, True),
    "gradnorm": MethodInfo(gradnorm, True, False, True, True, False),
    "sdmgrad": MethodInfo(sdmgrad, True, False, False, True, False),
    "gsmgrad": MethodInfo(gsmgrad, True, False, False, True, False),
    "gsmgrad_fa": MethodInfo(gsmgrad_fa, False, False, True, True, False),
    "rotograd": MethodInfo(rotograd, True, False, False, True, False),
    "graddrop": MethodInfo(graddrop, False, True, False, False, True),
    "moco": MethodInfo(moco, False, True, True, True, False),
    "db_mtl": MethodInfo(db_mtl, False, True, True, True, False),
    "uncertainty_weighting": MethodInfo(uncertainty_weighting, False, False, True, True, False),
    "dwa": MethodInfo(dwa, False, False, True, True, False),
    "gls": MethodInfo(gls, False, False, True, False, False),
    "stch": MethodInfo(stch, False, False, True, True, False),
    "imtl_l": MethodInfo(imtl_l, False, False, True, True, False),
    "famo": MethodInfo(famo, False, False, True, True, False),
    "bilb4mtl": MethodInfo(bilb4mtl, False, False, True, True, False),
    "excess_mtl": MethodInfo(excess_mtl, False, True, False, True, False),
    "modo": MethodInfo(modo, True, False, False, True, False),
    "cr_mogm": MethodInfo(cr_mogm, True, False, False, True, False),
    "cosmos": MethodInfo(cosmos, False, False, True, False, False),
    "pbi": MethodInfo(pbi, False, False, True, False, False),
    "scale_invariant_ls": MethodInfo(scale_invariant_ls, False, False, True, False, False),
    "krum": MethodInfo(krum, True, False, False, False, False),
    "trimmed_mean": MethodInfo(trimmed_mean, False, True, False, False, False),
    "mtac_ca": MethodInfo(mtac_ca, True, False, False, True, False),
    "mtac_fc": MethodInfo(mtac_fc, True, False, False, True, False),
}


def methods() -> dict[str, MethodInfo]:
  """Name → :class:`MethodInfo` for every method in the library."""
  return dict(_METHODS)
