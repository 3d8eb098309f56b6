"""The CelebA-style multi-task CNN of the scaling studies, as plain JAX functions.

Nine 3×3 convolutions (stride 2 after every second one), ReLU, global average
pooling, and one linear logit per task (the heads, a (C, K) matrix). Channel
widths scale with ``width`` so the shared encoder has 5.20M parameters at the
multiplier 1.02 of :data:`WIDTHS` and 10.0M / 20.0M / 34.4M at the larger ones.
Only the parameter counts follow the FAMO/ConicGrad CelebA set-up (5,176,640
shared parameters); its network is a different one (seven convolutions with
batch normalisation and max-pooling, two fully connected layers, heads with a
bias), which costs about 2.8× this encoder's multiply-adds per 64×64 image, so
time and memory ratios measured here are not those of that network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import conicgrad_jax as cg

BASE_CHANNELS = (32, 64, 64, 128, 128, 256, 256, 512, 576)
STRIDES = (1, 2, 1, 2, 1, 2, 1, 2, 1)
# Width multipliers for ≈ 5.2M, 10M, 20M and 34.4M encoder parameters.
WIDTHS = {"5.2M": 1.02, "10M": 1.415, "20M": 2.001, "34.4M": 2.624}


def channels(width: float):
  return tuple(max(8, int(round(c * width))) for c in BASE_CHANNELS)


def init_params(num_tasks: int, width: float = 1.0, seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {"encoder": {}, "heads": None}
  c_in = 3
  for i, c_out in enumerate(channels(width)):
    fan_in = 9 * c_in
    params["encoder"][f"conv{i}"] = jnp.asarray(
        rng.standard_normal((3, 3, c_in, c_out)) * np.sqrt(2.0 / fan_in), jnp.float32)
    params["encoder"][f"bias{i}"] = jnp.zeros((c_out,), jnp.float32)
    c_in = c_out
  params["heads"] = jnp.asarray(rng.standard_normal((c_in, num_tasks)) / np.sqrt(c_in),
                                jnp.float32)
  return params


def encode(params, images):
  h = images
  for i, stride in enumerate(STRIDES):
    h = jax.lax.conv_general_dilated(
        h, params["encoder"][f"conv{i}"], (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    h = jax.nn.relu(h + params["encoder"][f"bias{i}"])
  return jnp.mean(h, axis=(1, 2))


def head_losses(params, z, labels):
  """Binary cross-entropy of each task's logit: (K,) losses."""
  logits = z @ params["heads"]
  return jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits, axis=0)


def task_losses(params, images, labels):
  return head_losses(params, encode(params, images), labels)


def mean_loss_step(optimiser):
  """Linear scalarisation's ordinary jitted step: one backward pass of the mean loss."""
  def step(p, s, x, y):
    g = jax.grad(lambda p: jnp.mean(task_losses(p, x, y)))(p)
    u, s = optimiser.update(g, s, p)
    return optax.apply_updates(p, u), s
  return jax.jit(step)


def task_update(method, mode: str = "stacked", **options):
  """``cg.make_task_update`` for this model (representation mode splits at the encoder output)."""
  if mode == "representation":
    return cg.make_task_update(lambda p, z, x, y: head_losses(p, z, y), method, mode=mode,
                               encode=lambda p, x, y: encode(p, x), **options)
  return cg.make_task_update(task_losses, method, mode=mode, **options)


def training_step(update, optimiser, compiler_options=None):
  """Jitted ``(params, (task state, optimiser state), x, y) -> (params, state)`` around ``update``."""
  def step(p, state, x, y):
    task_state, opt_state = state
    _, u, task_state = update(p, task_state, x, y)
    u, opt_state = optimiser.update(u, opt_state, p)
    return optax.apply_updates(p, u), (task_state, opt_state)
  return jax.jit(step, compiler_options=compiler_options)


def is_shared(path, leaf) -> bool:
  del leaf
  return "encoder" in jax.tree_util.keystr(path)


def count(params, shared_only=True) -> int:
  tree = params["encoder"] if shared_only else params
  return int(sum(np.prod(l.shape) for l in jax.tree_util.tree_leaves(tree)))


def synthetic_batch(batch: int, num_tasks: int, seed: int = 0):
  """64×64 RGB images and K binary labels, each a thresholded random linear feature of the image."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, 64, 64, 3)).astype(np.float32)
  probes = rng.standard_normal((num_tasks, 64 * 64 * 3)).astype(np.float32)
  labels = (images.reshape(batch, -1) @ probes.T > 0).astype(np.float32)
  return jnp.asarray(images), jnp.asarray(labels)
