"""RotoGrad on the two-task digits problem: Flax NNX rotations, representation-level gradients.

The shared encoder maps an image to z ∈ ℝ³²; each task rotates z with its own
learned rotation (``conicgrad_jax.nn.RotoGradRotations``) before its head.
One jitted step:

* ``make_task_update(mode="representation")`` takes the K gradients of the
  task losses with respect to z (backward passes through the heads only),
  lets :func:`conicgrad_jax.rotograd` rescale them to a common magnitude, and
  back-propagates the combined z-gradient through the encoder once;
* the rotations get the gradient of RotoGrad's rotation objective, which
  ``representation_loss`` computes from the same K representation gradients;
* one Adam step updates everything.

Usage:
  python examples/rotograd_digits.py [--steps 300]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import conicgrad_jax as cg
from conicgrad_jax.nn import RotoGradRotations

from flax_digits import load_digits

LATENT = 32


class RotatedTwoTaskMLP(nnx.Module):

  def __init__(self, rngs: nnx.Rngs, width: int = 64):
    self.encoder = nnx.Sequential(
        nnx.Linear(64, width, rngs=rngs), nnx.relu,
        nnx.Linear(width, LATENT, rngs=rngs), nnx.relu)
    self.rotations = RotoGradRotations(num_tasks=2, latent_size=LATENT)
    self.digit_head = nnx.Linear(LATENT, 10, rngs=rngs)
    self.parity_head = nnx.Linear(LATENT, 2, rngs=rngs)

  def heads(self, z):
    z_digit, z_parity = self.rotations(z)
    return self.digit_head(z_digit), self.parity_head(z_parity)

  def __call__(self, x):
    return self.heads(self.encoder(x))


def make_train_step(graphdef, optimizer, method):
  def encode(params, x, y_digit, y_parity):
    return nnx.merge(graphdef, params).encoder(x)

  def task_losses(params, z, x, y_digit, y_parity):
    logits_digit, logits_parity = nnx.merge(graphdef, params).heads(z)
    return jnp.stack([
        optax.softmax_cross_entropy_with_integer_labels(logits_digit, y_digit).mean(),
        optax.softmax_cross_entropy_with_integer_labels(logits_parity, y_parity).mean(),
    ])

  def rotation_loss(params, rep_grads, *batch):
    # RotoGrad's rotation objective, from the per-task gradients o_k = ∂L_k/∂z.
    return nnx.merge(graphdef, params).rotations.loss(rep_grads)

  task = cg.make_task_update(task_losses, method, mode="representation", encode=encode,
                             representation_loss=rotation_loss)

  @jax.jit
  def train_step(params, opt_state, task_state, x, y_digit, y_parity):
    # The update holds the rotations' gradient too: the rotation loss reuses the K
    # representation gradients that RotoGrad's weights are computed from.
    losses, update, task_state = task.step(params, task_state, x, y_digit, y_parity)
    updates, opt_state = optimizer.update(update, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, task_state, losses

  return task.init, train_step


def train(steps: int = 300, batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
          verbose: bool = True):
  """Trains with RotoGrad; returns per-step training losses (steps, 2) and test metrics."""
  (x_tr, yd_tr, yp_tr), (x_te, yd_te, yp_te) = load_digits(seed)
  model = RotatedTwoTaskMLP(nnx.Rngs(seed))
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = optax.adam(lr)
  opt_state = optimizer.init(params)
  method = cg.rotograd(num_tasks=2)
  init, train_step = make_train_step(graphdef, optimizer, method)
  task_state = init(params)

  rng = np.random.default_rng(seed)
  history = []
  for step in range(steps):
    idx = rng.integers(0, len(x_tr), batch_size)
    params, opt_state, task_state, losses = train_step(
        params, opt_state, task_state, x_tr[idx], yd_tr[idx], yp_tr[idx])
    history.append(np.asarray(losses))
    if verbose and (step % 100 == 0 or step == steps - 1):
      print(f"step {step:4d}  losses digit {losses[0]:.3f} parity {losses[1]:.3f}  "
            f"weights {np.round(np.asarray(task_state.method_state.weights), 3)}")

  model = nnx.merge(graphdef, params)
  logits_d, logits_p = model(x_te)
  rotations = np.asarray(model.rotations.matrices())
  metrics = {
      "test_accuracy_digit": float(np.mean(np.argmax(logits_d, -1) == yd_te)),
      "test_accuracy_parity": float(np.mean(np.argmax(logits_p, -1) == yp_te)),
      "rotation_orthogonality_error": float(np.max(np.abs(
          np.einsum("kji,kjl->kil", rotations, rotations) - np.eye(LATENT)))),
      "rotation_distance_from_identity": float(np.max(np.abs(rotations - np.eye(LATENT)))),
  }
  if verbose:
    print(f"test accuracy: digit {metrics['test_accuracy_digit']:.3f}, "
          f"parity {metrics['test_accuracy_parity']:.3f}; rotations moved by "
          f"{metrics['rotation_distance_from_identity']:.3f}")
  return np.stack(history), metrics


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args()
  train(args.steps)
