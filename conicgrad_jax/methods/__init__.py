"""One module per balancing method: its weighting function and its optax factory.

``conicgrad_jax.methods`` is also callable: ``conicgrad_jax.methods()`` returns
the registry (name → :class:`~conicgrad_jax.registry.MethodInfo`), so
``cg.methods()`` and ``import conicgrad_jax.methods`` both work.
"""

import sys
import types


class _CallableModule(types.ModuleType):

  def __call__(self):
    from conicgrad_jax import registry
    return registry.methods()


sys.modules[__name__].__class__ = _CallableModule
