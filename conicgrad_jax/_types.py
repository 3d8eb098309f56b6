"""Type aliases shared by the package."""

from typing import Any

PyTree = Any
"""A JAX pytree (nested dicts, lists, tuples, NamedTuples, dataclasses of arrays)."""
