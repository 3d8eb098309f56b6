"""Sharded multi-task training: a Flax NNX model on a (data, model) device mesh with ConicGrad.

The encoder's weight matrices are split over the ``model`` axis
(``nnx.with_partitioning``), the batch over the ``data`` axis. One jitted
step computes the K task losses, the stacked task gradients of the shared
encoder (each task-gradient leaf sharded like its parameter, with the task
axis replicated), the ConicGrad update (per-device partial K×K Gram matrices,
one all-reduce, no gather of the gradients), and the Adam step. Parameters
and optimiser state keep their sharding.

Run on 8 simulated CPU devices:
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python examples/sharded_flax.py

Multi-host: start every process with ``jax.distributed.initialize()`` (on
TPU pods and SLURM/Open MPI clusters it finds its peers itself; otherwise
pass ``coordinator_address``, ``num_processes`` and ``process_id``), build
the same mesh from ``jax.devices()`` (all hosts' devices), and feed each
process its slice of the global batch with
``jax.make_array_from_process_local_data``. The step below is unchanged:
XLA inserts the cross-host all-reduce of the K×K Gram matrix like the
on-host one. No other engine is needed.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import conicgrad_jax as cg

NUM_TASKS = 4


class ShardedMultiTaskMLP(nnx.Module):
  """An MLP encoder whose hidden dimension is split over ``model``, with one linear head per task."""

  def __init__(self, rngs: nnx.Rngs, d_in: int = 64, width: int = 512, num_tasks: int = NUM_TASKS):
    init = nnx.initializers.lecun_normal()
    self.layer1 = nnx.Linear(d_in, width, rngs=rngs,
                             kernel_init=nnx.with_partitioning(init, (None, "model")),
                             bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("model",)))
    self.layer2 = nnx.Linear(width, width, rngs=rngs,
                             kernel_init=nnx.with_partitioning(init, ("model", None)))
    self.heads = nnx.Linear(width, num_tasks, rngs=rngs)

  def __call__(self, x):
    z = jnp.tanh(self.layer2(jnp.tanh(self.layer1(x))))
    return self.heads(z)                               # (batch, K): one regression output per task


def is_shared(path, leaf) -> bool:
  del leaf
  return "heads" not in jax.tree_util.keystr(path)


def make_mesh(model_axis: int, devices=None) -> Mesh:
  devices = np.array(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(len(devices) // model_axis, model_axis), ("data", "model"))


def build(mesh: Mesh, seed: int = 0, width: int = 512, lr: float = 1e-3):
  """The model created on ``mesh`` (its parameters sharded as annotated), optimiser, step."""
  with jax.set_mesh(mesh):
    model = ShardedMultiTaskMLP(nnx.Rngs(seed), width=width)
  graphdef, params = nnx.split(model, nnx.Param)
  optimizer = optax.chain(cg.conicgrad(0.5, shared=is_shared, num_tasks=NUM_TASKS),
                          optax.adam(lr))

  def task_losses(params, x, y):
    pred = nnx.merge(graphdef, params)(x)
    return jnp.mean((pred - y) ** 2, axis=0)

  grads_fn = cg.value_and_task_grads(task_losses, shared=is_shared)

  def train_step(params, opt_state, x, y):
    losses, task_grads = grads_fn(params, x, y)
    updates, opt_state = optimizer.update(task_grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, losses

  opt_state = jax.jit(optimizer.init)(params)     # Adam's moments inherit the parameters' sharding
  return params, opt_state, train_step


def shard_batch(mesh: Mesh, x, y):
  batch = NamedSharding(mesh, P("data"))
  return jax.device_put(x, batch), jax.device_put(y, batch)


def data(batch: int = 64, d_in: int = 64, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal((batch, d_in)).astype(np.float32)
  w = rng.standard_normal((d_in, NUM_TASKS)).astype(np.float32)
  w[:, 1] = -0.7 * w[:, 0] + 0.3 * w[:, 1]                     # two conflicting tasks
  return jnp.asarray(x), jnp.asarray(np.tanh(x @ w))


def per_device_memory(model_axis: int, width: int = 512, batch: int = 64, devices=None) -> dict:
  """Bytes per device of the compiled sharded step (arguments, outputs, temporaries)."""
  mesh = make_mesh(model_axis, devices)
  params, opt_state, train_step = build(mesh, width=width)
  x, y = shard_batch(mesh, *data(batch))
  analysis = jax.jit(train_step).lower(params, opt_state, x, y).compile().memory_analysis()
  return {"model_axis": model_axis, "argument_bytes": int(analysis.argument_size_in_bytes),
          "output_bytes": int(analysis.output_size_in_bytes),
          "temp_bytes": int(analysis.temp_size_in_bytes)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=200)
  args = parser.parse_args(argv)
  # A power of two of the devices (at most 256), so that the batch (64) and the width
  # (512) split evenly over a data axis and a model axis of up to 4.
  n = min(1 << (jax.device_count().bit_length() - 1), 256)
  devices = jax.devices()[:n]
  mesh = make_mesh(min(4, n), devices)
  params, opt_state, train_step = build(mesh)
  x, y = shard_batch(mesh, *data())
  step = jax.jit(train_step)
  for i in range(args.steps):
    params, opt_state, losses = step(params, opt_state, x, y)
    losses = np.asarray(losses)   # wait for the step (simulated CPU devices share few threads)
    if i % 50 == 0 or i == args.steps - 1:
      print(f"step {i:4d}  task losses {np.round(losses, 4)}")
  print(f"mesh {dict(mesh.shape)}; layer1 kernel sharding: "
        f"{params['layer1']['kernel'].sharding.spec}")
  for m in (1, 2, 4, 8):
    if m <= n and n // m <= 64:
      mem = per_device_memory(m, devices=devices)
      total = mem["argument_bytes"] + mem["output_bytes"] + mem["temp_bytes"]
      print(f"model axis {m}: {total / 2**20:.2f} MiB per device "
            f"(arguments {mem['argument_bytes'] / 2**20:.2f}, temporaries "
            f"{mem['temp_bytes'] / 2**20:.2f})")


if __name__ == "__main__":
  main()
