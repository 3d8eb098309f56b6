"""Train the MultiFashion benchmark model with ConicGrad and draw its gradient-conflict dashboard.

Two Fashion-MNIST items overlaid on a 36×36 canvas, two 10-class tasks (the
left and the right item), the LeNet-style shared encoder of
``benchmarks/overlaid.py``. ConicGrad is wrapped in ``cg.with_diagnostics``, so
every step also logs the task gradients' pairwise cosines, the angle of the
update to each task gradient, the gradient norms and G's condition number —
computed from the Gram matrix ConicGrad already forms. The history becomes one
PNG with ``cg.dashboard.plot_dashboard``.

Data: Debian's ``dataset-fashion-mnist`` (``apt-get install
dataset-fashion-mnist``). Without it the example says so and overlays
scikit-learn's bundled 8×8 digits (upscaled to 24×24) instead, so it runs offline.

Usage (from the repository root):
  python examples/conflict_dashboard.py [--steps 300] [--out conflict_dashboard.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import conicgrad_jax as cg  # noqa: E402
from conicgrad_jax import dashboard  # noqa: E402
from benchmarks import overlaid  # noqa: E402

TASKS = ("left", "right")


def load_data(n_train: int, seed: int = 0):
  """(images (N, 36, 36, 1), labels (N, 2)) and the data set's name."""
  rng = np.random.default_rng(seed)
  if os.path.isdir(overlaid.FASHION_DIR):
    x, y = overlaid.load_fashion("train")
    name = "MultiFashion"
  else:
    print(f"Fashion-MNIST is not installed ({overlaid.FASHION_DIR}); install it with "
          "`apt-get install dataset-fashion-mnist`. Using scikit-learn's digits instead.")
    from sklearn.datasets import load_digits
    digits = load_digits()
    small = (digits.images / 16.0).astype(np.float32)
    x = np.pad(np.kron(small, np.ones((3, 3), np.float32)), ((0, 0), (2, 2), (2, 2)))
    y = digits.target.astype(np.int32)
    name = "MultiDigits (fallback)"
  images, labels = overlaid.overlay(x, y, n_train, rng)
  return jnp.asarray(images), jnp.asarray(labels), name


def train(steps: int = 300, batch: int = 128, n_train: int = 4000, lr: float = 1e-3,
          c: float = 0.5, seed: int = 0, verbose: bool = True):
  """Trains with ConicGrad and returns the list of per-step diagnostics and the data set's name."""
  images, labels, name = load_data(n_train, seed)
  params = overlaid.init_params(seed)
  method = cg.with_diagnostics(cg.conicgrad(c, shared=overlaid.is_shared, num_tasks=2),
                               num_tasks=2)
  optimiser = optax.adam(lr)
  task_grads = cg.value_and_task_grads(overlaid.task_losses, shared=overlaid.is_shared)

  @jax.jit
  def step(params, state, x, y):
    method_state, opt_state = state
    losses, grads = task_grads(params, x, y)
    updates, method_state = method.update(grads, method_state, params, losses=losses)
    updates, opt_state = optimiser.update(updates, opt_state, params)
    return optax.apply_updates(params, updates), (method_state, opt_state)

  state = (method.init(params), optimiser.init(params))
  rng = np.random.default_rng(seed + 1)
  history = []
  start = time.perf_counter()
  for t in range(steps):
    idx = rng.integers(0, images.shape[0], batch)
    params, state = step(params, state, images[idx], labels[idx])
    history.append(jax.device_get(state[0].diagnostics))
    if verbose and (t % 50 == 0 or t == steps - 1):
      logged = cg.diagnostics.as_dict(history[-1], TASKS)
      print(f"step {t:4d}  losses {logged['loss/left']:.3f} {logged['loss/right']:.3f}  "
            f"cos {logged['cos/left-right']:+.2f}  weights {logged['weight/left']:.2f} "
            f"{logged['weight/right']:.2f}  ({time.perf_counter() - start:.0f} s)")
  return history, name


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--n-train", type=int, default=4000)
  parser.add_argument("--c", type=float, default=0.5)
  parser.add_argument("--out", default="conflict_dashboard.png")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  history, name = train(args.steps, args.batch, args.n_train, c=args.c, verbose=not args.quiet)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  dashboard.plot_dashboard(history, args.out, task_names=TASKS,
                           title=f"ConicGrad (c = {args.c}) on {name}: gradient conflicts")
  if not args.quiet:
    print(f"wrote {args.out}")
  return history


if __name__ == "__main__":
  main()
