"""Test configuration: 8 simulated CPU devices, fast XLA compilation, one compilation cache per run.

Almost all of the default suite's time is XLA:CPU compiling small programs,
not running them. Unless the run selects the ``slow`` marker, the tests
therefore compile with XLA:CPU's elemental emitters and without LLVM
optimisation (``--xla_cpu_use_fusion_emitters=false
--xla_backend_optimization_level=0``): the same HLO, the same operations,
about 2× faster to compile (the assertions compare values with tolerances,
never timings). ``python -m pytest -m slow`` keeps XLA's default code
generation, so CI runs the optimised default path too. Set
``CONICGRAD_JAX_TEST_DEFAULT_XLA=1`` to use the defaults everywhere.

Many tests compile the same program (the same method on the same shapes, in
different files and pytest-xdist workers). JAX's persistent compilation cache,
pointed at a directory made for this run and removed after it, lets every such
program compile once per run. Set ``CONICGRAD_JAX_TEST_CACHE`` to a directory
to keep the cache between runs instead.
"""

import os
import shutil
import sys
import tempfile

import hypothesis
import pytest

_DEVICES = "--xla_force_host_platform_device_count=8"
_FAST_COMPILE = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=0")


def _add_xla_flags(*flags):
  current = os.environ.get("XLA_FLAGS", "")
  missing = [f for f in flags if f.split("=")[0] not in current]
  os.environ["XLA_FLAGS"] = " ".join([current] + missing).strip()


_add_xla_flags(_DEVICES)

# CI replays the same examples on every run (HYPOTHESIS_PROFILE=ci); elsewhere each
# run draws new ones.
hypothesis.settings.register_profile("ci", derandomize=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

sys.path.insert(0, os.path.dirname(__file__))

_CACHE_ENV = "CONICGRAD_JAX_TEST_CACHE"
_owned_cache = pytest.StashKey[str]()


def _selects_slow_tests(config) -> bool:
  markexpr = config.getoption("markexpr", "") or ""
  return "slow" in markexpr and "not slow" not in markexpr


def pytest_configure(config):
  # Before any test initialises a JAX backend (XLA reads its flags once).
  if not _selects_slow_tests(config) and not os.environ.get("CONICGRAD_JAX_TEST_DEFAULT_XLA"):
    _add_xla_flags(*_FAST_COMPILE)
  path = os.environ.get(_CACHE_ENV)
  if not path and not hasattr(config, "workerinput"):
    # The controller makes the directory; pytest-xdist workers inherit the variable.
    path = tempfile.mkdtemp(prefix="conicgrad-jax-xla-cache-")
    os.environ[_CACHE_ENV] = path
    config.stash[_owned_cache] = path
  if path:
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
  path = config.stash.get(_owned_cache, None)
  if path:
    shutil.rmtree(path, ignore_errors=True)
    os.environ.pop(_CACHE_ENV, None)

