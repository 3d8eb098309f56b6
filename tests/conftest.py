"""Test configuration: 8 simulated CPU devices, one XLA compilation cache per run, helpers on sys.path.

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

import pytest

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

sys.path.insert(0, os.path.dirname(__file__))

_CACHE_ENV = "CONICGRAD_JAX_TEST_CACHE"
_owned_cache = pytest.StashKey[str]()


def pytest_configure(config):
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

