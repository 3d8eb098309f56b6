"""A jitted Flax NNX multi-task training loop with ConicGrad, on scikit-learn's digits.

Two tasks share an MLP encoder: task "digit" classifies the digit (10 classes),
task "parity" tells odd from even (2 classes). One jitted step computes both
task losses in one forward pass, the stacked task gradients of the shared
encoder (K = 2 backward passes: a loop of VJPs on the CPU, a vmapped VJP on
accelerators), the heads' own gradients,
the ConicGrad update and the Adam step.

Usage:
  python examples/flax_digits.py [--steps 300] [--c 0.5]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import conicgrad_jax as cg


class TwoTaskMLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, width: int = 64):
    self.encoder = nnx.Sequential(
        nnx.Linear(64, width, rngs=rngs), nnx.relu,
        nnx.Linear(width, width, rngs=rngs), nnx.relu)
    self.digit_head = nnx.Linear(width, 10, rngs=rngs)
    self.parity_head = nnx.Linear(width, 2, rngs=rngs)

  def __call__(self, x):
    z = self.encoder(x)
    return self.digit_head(z), self.parity_head(z)


def load_digits(seed: int = 0):
  """Digits scaled to [0, 1], split 80/20; labels: digit and parity."""
  from sklearn.datasets import load_digits as sk_load
  data = sk_load()
  x = (data.data / 16.0).astype(np.float32)
  y = data.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  x, y = x[order], y[order]
  n_train = int(0.8 * len(x))
  split = lambda a: (a[:n_train], a[n_train:])
  (x_tr, x_te), (y_tr, y_te) = split(x), split(y)
  return (x_tr, y_tr, y_tr % 2), (x_te, y_te, y_te % 2)


def is_shared(path, leaf) -> bool:
  del leaf
  return "encoder" in jax.tree_util.keystr(path)


def make_train_step(graphdef, optimizer):
  """One jitted step; ``losses=`` is passed to every method (loss weightings use it)."""
  def task_losses(params, x, y_digit, y_parity):
    logits_digit, logits_parity = nnx.merge(graphdef, params)(x)
    return jnp.stack([
        optax.softmax_cross_entropy_with_integer_labels(logits_digit, y_digit).mean(),
        optax.softmax_cross_entropy_with_integer_labels(logits_parity, y_parity).mean(),
    ])

  grads_fn = cg.value_and_task_grads(task_losses, shared=is_shared)

  @jax.jit
  def train_step(params, opt_state, x, y_digit, y_parity):
    losses, task_grads = grads_fn(params, x, y_digit, y_parity)
    updates, opt_state = optimizer.update(task_grads, opt_state, params, losses=losses)
    return optax.apply_updates(params, updates), opt_state, losses

  return train_step, jax.jit(task_losses)


def train(steps: int = 300, c: float = 0.5, batch_size: int = 128, lr: float = 3e-3,
          seed: int = 0, verbose: bool = True, method=None):
  """Trains the two-task model; returns per-step training losses (steps, 2) and test metrics.

  ``method``: any transformation of this library (built with ``shared=is_shared``
  and ``num_tasks=2``); ConicGrad with cone parameter ``c`` by default.
  """
  (x_tr, yd_tr, yp_tr), (x_te, yd_te, yp_te) = load_digits(seed)
  model = TwoTaskMLP(nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  if method is None:
    method = cg.conicgrad(c, shared=is_shared, num_tasks=2)
  optimizer = optax.chain(method, optax.adam(lr))
  opt_state = optimizer.init(params)
  train_step, task_losses = make_train_step(graphdef, optimizer)

  rng = np.random.default_rng(seed)
  history = []
  for step in range(steps):
    idx = rng.integers(0, len(x_tr), batch_size)
    params, opt_state, losses = train_step(params, opt_state, x_tr[idx], yd_tr[idx], yp_tr[idx])
    history.append(np.asarray(losses))
    if verbose and (step % 100 == 0 or step == steps - 1):
      extra = ""
      if hasattr(opt_state[0], "diagnostics"):
        extra = f"  cos(update, g0) {float(opt_state[0].diagnostics.cosine):.3f}"
      print(f"step {step:4d}  losses digit {losses[0]:.3f} parity {losses[1]:.3f}{extra}  "
            f"weights {np.round(np.asarray(opt_state[0].weights), 3)}")

  logits_d, logits_p = nnx.merge(graphdef, params)(x_te)
  metrics = {
      "test_loss": np.asarray(task_losses(params, x_te, yd_te, yp_te)),
      "test_accuracy_digit": float(np.mean(np.argmax(logits_d, -1) == yd_te)),
      "test_accuracy_parity": float(np.mean(np.argmax(logits_p, -1) == yp_te)),
  }
  if verbose:
    print(f"test accuracy: digit {metrics['test_accuracy_digit']:.3f}, "
          f"parity {metrics['test_accuracy_parity']:.3f}")
  return np.stack(history), metrics


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--c", type=float, default=0.5)
  args = parser.parse_args()
  train(args.steps, args.c)
