"""Convolutions in XLA's canonical dimension order, for code that runs inside a branch or loop body.

Autodiff writes the backward pass of a convolution as convolutions whose
dimension numbers are permuted (the kernel gradient of an NHWC/HWIO layer is
``f01b_i01o->01bf``). At the top level of a program XLA:CPU rewrites such a
convolution into its canonical order (batch, spatial…, feature / spatial…,
in, out) with transposes around it, and runs it on its fast path. Inside a
``lax.cond`` branch or a ``lax.map``/``lax.scan`` body it does not, and the
same backward pass runs many times slower (jax issue 12868; ``python -m
benchmarks perf``: 17.3× for the amortised step of the benchmark CNN, 22.3×
for its chunked task gradients in ``lax.map``). :func:`canonical_convolutions`
does that rewrite itself, at the level of the traced program, so the body's
convolutions are already canonical.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend import core as jax_core

# Nested calls whose bodies are inlined: ``jit`` (named ``pjit`` in older jax) and closed_call.
_CALL_PRIMITIVES = ("pjit", "jit", "closed_call")


def _inlinable(params) -> bool:
  """Whether a nested call has nothing to keep but its body (no shardings, layouts, options)."""
  shardings = (*params.get("in_shardings", ()), *params.get("out_shardings", ()))
  layouts = (*params.get("in_layouts", ()), *params.get("out_layouts", ()))
  return (all(type(s).__name__ == "UnspecifiedValue" for s in shardings)
          and all(layout is None for layout in layouts)
          and not params.get("compiler_options_kvs"))


def _canonical_convolution(lhs, rhs, *, dimension_numbers, **params):
  """One convolution with its operands transposed into canonical order; same result."""
  dn = dimension_numbers
  spatial = len(dn.lhs_spec) - 2
  lhs_order = (dn.lhs_spec[0], *dn.lhs_spec[2:], dn.lhs_spec[1])
  rhs_order = (*dn.rhs_spec[2:], dn.rhs_spec[1], dn.rhs_spec[0])
  out_order = (dn.out_spec[0], *dn.out_spec[2:], dn.out_spec[1])
  batch_feature_spatial = (0, spatial + 1, *range(1, spatial + 1))
  canonical = lax.ConvDimensionNumbers(
      lhs_spec=batch_feature_spatial,
      rhs_spec=(spatial + 1, spatial, *range(spatial)),
      out_spec=batch_feature_spatial)
  out = lax.conv_general_dilated_p.bind(
      jnp.transpose(lhs, lhs_order), jnp.transpose(rhs, rhs_order),
      dimension_numbers=canonical, **params)
  return jnp.transpose(out, tuple(np.argsort(out_order)))


def _bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  # jax 0.8 returns (subfuns, params); jax 0.10 the params alone.
  subfuns, params = params if isinstance(params, tuple) else ((), params)
  return eqn.primitive.bind(*subfuns, *invals, **params)


def _evaluate(jaxpr, consts, *args) -> list:
  env = {}

  def read(var):
    return var.val if isinstance(var, jax_core.Literal) else env[var]

  env.update(zip(jaxpr.constvars, consts))
  env.update(zip(jaxpr.invars, args))
  for eqn in jaxpr.eqns:
    invals = [read(v) for v in eqn.invars]
    name = eqn.primitive.name
    inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if name == "conv_general_dilated":
      outs = [_canonical_convolution(*invals, **eqn.params)]
    elif (name in _CALL_PRIMITIVES and isinstance(inner, jax_core.ClosedJaxpr)
          and _inlinable(eqn.params)):
      outs = _evaluate(inner.jaxpr, inner.consts, *invals)
    else:
      outs = _bind(eqn, invals)
      if not eqn.primitive.multiple_results:
        outs = [outs]
    env.update(zip(eqn.outvars, outs))
  return [read(v) for v in jaxpr.outvars]


def canonical_convolutions_if(enabled: bool, fun: Callable[..., Any]) -> Callable[..., Any]:
  """:func:`canonical_convolutions` of ``fun`` when ``enabled``, else ``fun`` itself."""
  return canonical_convolutions(fun) if enabled else fun


def canonical_convolutions(fun: Callable[..., Any]) -> Callable[..., Any]:
  """``fun`` with the convolutions of its trace (and of nested ``jit`` calls) in canonical order.

  The result equals ``fun``'s up to the rounding of a reordered convolution.
  Nested ``jit`` calls are inlined, unless they carry shardings, layouts or
  compiler options (those are kept as they are, body included); other
  higher-order primitives (loops, branches, ``jax.checkpoint``, custom
  derivative rules) are kept with their bodies unchanged. Arguments are
  positional pytrees of arrays (as ``lax.cond``'s operands).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from conicgrad_jax.task_updates.conv_layout import canonical_convolutions
    >>> def kernel_grad(w, x):
    ...   conv = lambda w: jax.lax.conv_general_dilated(
    ...       x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ...   return jax.grad(lambda w: jnp.sum(conv(w) ** 2))(w)
    >>> w, x = jnp.ones((3, 3, 2, 4)), jnp.ones((1, 8, 8, 2))
    >>> bool(jnp.allclose(canonical_convolutions(kernel_grad)(w, x), kernel_grad(w, x)))
    True
  """

  def rewritten(*args):
    closed, out_shape = jax.make_jaxpr(fun, return_shape=True)(*args)
    outs = _evaluate(closed.jaxpr, closed.consts, *jax.tree_util.tree_leaves(args))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

  return rewritten
