"""conicgrad_jax: multi-task gradient balancing for JAX and Optax.

The flagship is :func:`conicgrad`, an ``optax.GradientTransformationExtraArgs``
that turns stacked per-task gradients into one update inside a cone around
the mean gradient. The pieces are public so other methods reuse them:
:func:`gram_matrix` and :func:`combine` (pytree-native linear algebra),
:func:`conic_weighting` (Gram matrix in, K weights out) and
:func:`gram_weighting_transformation` (a weighting to an optax transformation).
"""

from conicgrad_jax.accumulation import accumulate_task_grads
from conicgrad_jax.linalg import combine
from conicgrad_jax.linalg import gram_matrix
from conicgrad_jax.methods.conicgrad import ConicGradState
from conicgrad_jax.methods.gradnorm import gradnorm
from conicgrad_jax.methods.gsmgrad import gsmgrad
from conicgrad_jax.methods.gsmgrad_fa import gsmgrad_fa
from conicgrad_jax.methods.gsmgrad_fa import gsmgrad_fa_loss
from conicgrad_jax.methods.rotograd import rotation_loss as rotograd_rotation_loss
from conicgrad_jax.methods.rotograd import rotograd
from conicgrad_jax.task_updates import TaskUpdate
from conicgrad_jax.task_updates import TaskUpdateState
from conicgrad_jax.task_updates import make_task_update
from conicgrad_jax.methods.aligned_mtl import aligned_mtl
from conicgrad_jax.methods.bilb4mtl import bilb4mtl
from conicgrad_jax.methods.bilb4mtl import bilb4mtl_loss
from conicgrad_jax.methods.cagrad import cagrad
from conicgrad_jax.methods.config import config
from conicgrad_jax.nonfinite import SkipNonfiniteState
from conicgrad_jax.nonfinite import skip_nonfinite
from conicgrad_jax.methods.conicgrad import conicgrad
from conicgrad_jax.methods.db_mtl import db_mtl
from conicgrad_jax.methods.dualproj import dualproj
from conicgrad_jax.methods.dwa import dwa
from conicgrad_jax.methods.fairgrad import fairgrad
from conicgrad_jax.methods.famo import famo
from conicgrad_jax.methods.famo import famo_loss
from conicgrad_jax.methods.gls import gls
from conicgrad_jax.methods.gls import gls_loss
from conicgrad_jax.methods.graddrop import graddrop
from conicgrad_jax.methods.gradvac import gradvac
from conicgrad_jax.methods.imtl_g import imtl_g
from conicgrad_jax.methods.imtl_l import imtl_l
from conicgrad_jax.methods.imtl_l import imtl_l_loss
from conicgrad_jax.methods.mgda import mgda
from conicgrad_jax.methods.moco import moco
from conicgrad_jax.methods.nash_mtl import nash_mtl
from conicgrad_jax.methods.pcgrad import pcgrad
from conicgrad_jax.methods.rlw import rlw
from conicgrad_jax.methods.sdmgrad import sdmgrad
from conicgrad_jax.methods.stch import stch
from conicgrad_jax.methods.stch import stch_loss
from conicgrad_jax.methods.uncertainty_weighting import uncertainty_weighting
from conicgrad_jax.methods.uncertainty_weighting import uncertainty_weighting_loss
from conicgrad_jax.methods.upgrad import upgrad
from conicgrad_jax.registry import MethodInfo
from conicgrad_jax import methods
from conicgrad_jax.methods.linear_scalarization import ScalarizationState
from conicgrad_jax.methods.linear_scalarization import linear_scalarization
from conicgrad_jax.task_updates import gramian_value_and_update
from conicgrad_jax.task_updates import value_and_task_grads
from conicgrad_jax.aggregator import gram_weighting_transformation
from conicgrad_jax.solvers.cone import ConicDiagnostics
from conicgrad_jax.solvers.cone import conic_weighting
from conicgrad_jax.solvers.cone import solve_cone_dual
from conicgrad_jax.methods.cosmos import cosmos
from conicgrad_jax.methods.cosmos import cosmos_loss
from conicgrad_jax.methods.cr_mogm import cr_mogm
from conicgrad_jax.methods.excess_mtl import excess_mtl
from conicgrad_jax.methods.krum import krum
from conicgrad_jax.methods.modo import modo
from conicgrad_jax.methods.pbi import pbi
from conicgrad_jax.methods.pbi import pbi_loss
from conicgrad_jax.methods.scale_invariant_ls import scale_invariant_ls
from conicgrad_jax.methods.scale_invariant_ls import scale_invariant_ls_loss
from conicgrad_jax.methods.trimmed_mean import trimmed_mean
from conicgrad_jax.diagnostics import ConflictDiagnostics
from conicgrad_jax.diagnostics import conflict_diagnostics
from conicgrad_jax.diagnostics import with_diagnostics
from conicgrad_jax import diagnostics
from conicgrad_jax import dashboard

from conicgrad_jax.methods.mtac_ca import MTACState
from conicgrad_jax.methods.mtac_ca import mtac_ca
from conicgrad_jax.methods.mtac_ca import mtac_ca_weighting
from conicgrad_jax.methods.mtac_fc import MTACFCState
from conicgrad_jax.methods.mtac_fc import mtac_fc
from conicgrad_jax.methods.mtac_fc import mtac_fc_weighting

__version__ = "0.1.0"

__all__ = [
    "bilb4mtl",
    "bilb4mtl_loss",
    "dwa",
    "famo",
    "famo_loss",
    "gls",
    "gls_loss",
    "imtl_l",
    "imtl_l_loss",
    "stch",
    "stch_loss",
    "uncertainty_weighting",
    "uncertainty_weighting_loss",

    "MethodInfo",
    "accumulate_task_grads",
    "skip_nonfinite",
    "SkipNonfiniteState",
    "gradnorm",
    "gsmgrad",
    "gsmgrad_fa",
    "gsmgrad_fa_loss",
    "rotograd",
    "rotograd_rotation_loss",
    "make_task_update",
    "TaskUpdate",
    "TaskUpdateState",
    "sdmgrad",
    "db_mtl",
    "graddrop",
    "moco",
    "aligned_mtl",
    "cagrad",
    "config",
    "dualproj",
    "fairgrad",
    "gradvac",
    "imtl_g",
    "methods",
    "mgda",
    "nash_mtl",
    "pcgrad",
    "rlw",
    "upgrad",
    "ConicDiagnostics",
    "ConicGradState",
    "combine",
    "conic_weighting",
    "conicgrad",
    "gram_matrix",
    "gramian_value_and_update",
    "gram_weighting_transformation",
    "linear_scalarization",
    "ScalarizationState",
    "solve_cone_dual",
    "value_and_task_grads",
    "cosmos",
    "cosmos_loss",
    "cr_mogm",
    "excess_mtl",
    "krum",
    "modo",
    "pbi",
    "pbi_loss",
    "scale_invariant_ls",
    "scale_invariant_ls_loss",
    "trimmed_mean",
    "ConflictDiagnostics",
    "conflict_diagnostics",
    "dashboard",
    "diagnostics",
    "with_diagnostics",
    "MTACFCState",
    "MTACState",
    "mtac_ca",
    "mtac_ca_weighting",
    "mtac_fc",
    "mtac_fc_weighting",
]
