"""Walking jaxprs in tests: the equations of a primitive, those in nested bodies included."""


def sub_jaxprs(eqn):
  """The jaxprs nested in one equation's parameters (jit, cond, scan, closed_call bodies)."""
  for param in eqn.params.values():
    for sub in param if isinstance(param, (tuple, list)) else (param,):
      if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
        yield sub.jaxpr
      elif hasattr(sub, "eqns"):
        yield sub


def equations(jaxpr, primitive):
  """Every equation of ``primitive`` in ``jaxpr`` and, recursively, in its nested jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      found.append(eqn)
    for sub in sub_jaxprs(eqn):
      found += equations(sub, primitive)
  return found
