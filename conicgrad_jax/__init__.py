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
from conicgrad_jax.methods.adaptive import gradnorm
from conicgrad_jax.methods.adaptive import gsmgrad
from conicgrad_jax.methods.adaptive import gsmgrad_fa
from conicgrad_jax.methods.adaptive import gsmgrad_fa_loss
from conicgrad_jax.methods.rotograd import rotation_loss as rotograd_rotation_loss
from conicgrad_jax.methods.rotograd import rotograd
from conicgrad_jax.modes import TaskUpdateState
from conicgrad_jax.modes import make_task_update
from conicgrad_jax.nonfinite import SkipNonfiniteState
from conicgrad_jax.nonfinite import skip_nonfinite
from conicgrad_jax.methods.adaptive import sdmgrad
from conicgrad_jax.methods.bargaining import fairgrad
from conicgrad_jax.methods.bargaining import nash_mtl
from conicgrad_jax.methods.conicgrad import conicgrad
from conicgrad_jax.methods.jacobian import db_mtl
from conicgrad_jax.methods.jacobian import graddrop
from conicgrad_jax.methods.jacobian import moco
from conicgrad_jax.methods.loss_weighting import bilb4mtl
from conicgrad_jax.methods.loss_weighting import bilb4mtl_loss
from conicgrad_jax.methods.loss_weighting import dwa
from conicgrad_jax.methods.loss_weighting import famo
from conicgrad_jax.methods.loss_weighting import famo_loss
from conicgrad_jax.methods.loss_weighting import gls
from conicgrad_jax.methods.loss_weighting import gls_loss
from conicgrad_jax.methods.loss_weighting import imtl_l
from conicgrad_jax.methods.loss_weighting import imtl_l_loss
from conicgrad_jax.methods.loss_weighting import stch
from conicgrad_jax.methods.loss_weighting import stch_loss
from conicgrad_jax.methods.loss_weighting import uncertainty_weighting
from conicgrad_jax.methods.loss_weighting import uncertainty_weighting_loss
from conicgrad_jax.methods.min_norm import cagrad
from conicgrad_jax.methods.min_norm import dualproj
from conicgrad_jax.methods.min_norm import mgda
from conicgrad_jax.methods.min_norm import upgrad
from conicgrad_jax.methods.projection import aligned_mtl
from conicgrad_jax.methods.projection import config
from conicgrad_jax.methods.projection import imtl_g
from conicgrad_jax.methods.stochastic import gradvac
from conicgrad_jax.methods.stochastic import pcgrad
from conicgrad_jax.methods.stochastic import rlw
from conicgrad_jax.registry import MethodInfo
from conicgrad_jax import methods
from conicgrad_jax.methods.scalarization import ScalarizationState
from conicgrad_jax.methods.scalarization import linear_scalarization
from conicgrad_jax.task_grads import gramian_value_and_update
from conicgrad_jax.task_grads import value_and_task_grads
from conicgrad_jax.aggregator import gram_weighting_transformation
from conicgrad_jax.solvers.cone import ConicDiagnostics
from conicgrad_jax.solvers.cone import conic_weighting
from conicgrad_jax.solvers.cone import solve_cone_dual

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
]
