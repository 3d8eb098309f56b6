"""Live torchjd references for the tests (skipped when torch or torchjd is not installed).

Install them with ``pip install torch torchjd`` (the ``perf`` extra) to run these checks.
"""

import numpy as np
import pytest


def require():
  """(torch, torchjd) or skip the test."""
  torch = pytest.importorskip("torch")
  torchjd = pytest.importorskip("torchjd")
  return torch, torchjd


def cosine(a, b):
  a, b = np.ravel(np.asarray(a, np.float64)), np.ravel(np.asarray(b, np.float64))
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def random_jacobian(rng, k, m, conflict=0.8):
  J = rng.standard_normal((k, m))
  J[1:] -= conflict * J[0]
  return J
