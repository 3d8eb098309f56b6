"""The standard two-task toy problem (CAGrad → Nash-MTL → FAMO → ConicGrad, Figure 1).

Runs ConicGrad (c = 0.5) beside plain mean-gradient descent from the five
standard starting points, with Adam (lr 1e-3) for 60,000 steps in float64, compiled with
``lax.scan`` and vectorised over the starts with ``vmap``. Prints each run's
final losses and whether it reached the global minimum of the mean loss, and
saves the trajectories on the loss landscape with the Pareto front.

The objective is the one of the CAGrad/Nash-MTL/FAMO code bases, with the
first loss scaled by 0.1 as in the Nash-MTL/FAMO set-up.

Usage:
  python examples/toy.py [--steps 60000] [--c 0.5] [--out examples/toy.png]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import conicgrad_jax as cg

STARTS = np.array([[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -0.5], [9.0, -1.0]],
                  np.float32)
LOWER = 5e-6
FIRST_LOSS_SCALE = 0.1
PARETO_X2 = -8.3552          # the plotting constant of all reference code bases
REACHED_TOL = 1e-2           # a run "reaches the global minimum" within this mean loss


def _clamp0(t):
  # torch.clamp(min=0) passes the gradient at exactly 0; jnp.maximum would halve it.
  return jnp.where(t >= 0, t, 0.0)


def toy_losses(x, scale=FIRST_LOSS_SCALE):
  """The two toy losses at x = (x1, x2)."""
  x1, x2 = x[0], x[1]
  f1_log = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)), LOWER)) + 6
  f2_log = jnp.log(jnp.maximum(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2), LOWER)) + 6
  c1 = _clamp0(jnp.tanh(0.5 * x2))
  f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  c2 = _clamp0(jnp.tanh(-0.5 * x2))
  f1 = c1 * f1_log + c2 * f1_sq
  f2 = c1 * f2_log + c2 * f2_sq
  return jnp.stack([scale * f1, f2])


def global_minimum_of_mean_loss():
  """min_x mean(toy_losses(x)) by a dense grid and Adam refinement (value, argmin)."""
  mean_loss = lambda x: jnp.mean(toy_losses(x))
  g1, g2 = np.meshgrid(np.linspace(-10, 10, 801), np.linspace(-10, 10, 801))
  grid = jnp.asarray(np.stack([g1.ravel(), g2.ravel()], 1), jnp.float32)
  values = jax.vmap(mean_loss)(grid)
  x = grid[jnp.argmin(values)]
  opt = optax.adam(1e-3)

  def step(carry, _):
    x, s = carry
    u, s = opt.update(jax.grad(mean_loss)(x), s)
    return (optax.apply_updates(x, u), s), None

  (x, _), _ = jax.lax.scan(step, (x, opt.init(x)), None, length=5000)
  return float(mean_loss(x)), np.asarray(x)


def run(method, steps, record_every=50, starts=STARTS):
  """Trajectories (T, S, 2) and final losses (S, 2) of ``method`` chained with Adam,
  from each of the S ``starts`` (the five standard ones by default).

  In float64: from (9, 9) the runs pass close to the edge of a flat region, where
  float32 rounding decides whether, and when, they leave it.
  """
  if not isinstance(record_every, int) or record_every <= 0:
    raise ValueError(f"`record_every` must be a positive integer, got {record_every!r}.")
  if steps <= 0 or steps % record_every:
    raise ValueError(f"`steps` must be a positive multiple of record_every={record_every}, "
                     f"got {steps}.")
  opt = optax.chain(method, optax.adam(1e-3))
  task_grads = cg.value_and_task_grads(toy_losses)

  def one_start(x0):
    def step(carry, _):
      x, s = carry
      _, g = task_grads(x)
      u, s = opt.update(g, s, x)
      return (optax.apply_updates(x, u), s), x

    def chunk(carry, _):
      carry, xs = jax.lax.scan(step, carry, None, length=record_every)
      return carry, xs[0]

    (x, _), path = jax.lax.scan(chunk, (x0, opt.init(x0)), None,
                                length=steps // record_every)
    return jnp.concatenate([path, x[None]]), toy_losses(x)

  with jax.enable_x64(True):
    paths, final = jax.jit(jax.vmap(one_start))(jnp.asarray(starts, jnp.float64))
    return np.asarray(paths).transpose(1, 0, 2), np.asarray(final)


def plot(results, best_x, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  g1, g2 = np.meshgrid(np.linspace(-10, 10, 300), np.linspace(-10, 10, 300))
  pts = jnp.asarray(np.stack([g1.ravel(), g2.ravel()], 1), jnp.float32)
  mean = np.asarray(jax.vmap(lambda x: jnp.mean(toy_losses(x)))(pts)).reshape(g1.shape)
  fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.6),
                           squeeze=False)
  colors = plt.cm.viridis(np.linspace(0.05, 0.9, len(STARTS)))
  for ax, (name, (paths, _)) in zip(axes[0], results.items()):
    ax.contourf(g1, g2, mean, levels=40, cmap="Greys_r", alpha=0.85)
    ax.plot([-7, 7], [PARETO_X2, PARETO_X2], color="tab:red", lw=3, label="Pareto front")
    for i, color in enumerate(colors):
      ax.plot(paths[:, i, 0], paths[:, i, 1], color=color, lw=1.6)
      ax.scatter(*STARTS[i], color=color, marker="o", s=30, zorder=3)
      ax.scatter(*paths[-1, i], color=color, marker="*", s=90, edgecolor="k", zorder=4)
    ax.scatter(*best_x, color="gold", marker="X", s=120, edgecolor="k", zorder=5,
               label="min of mean loss")
    ax.set_title(name)
    ax.set_xlim(-10, 10)
    ax.set_ylim(-10, 10)
    ax.set_xlabel("x1")
  axes[0][0].set_ylabel("x2")
  axes[0][0].legend(loc="upper left", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=60_000)
  parser.add_argument("--c", type=float, default=0.5)
  parser.add_argument("--out", default="examples/toy.png")
  args = parser.parse_args(argv)

  best, best_x = global_minimum_of_mean_loss()
  print(f"global minimum of the mean loss: {best:.4f} at x = ({best_x[0]:.3f}, "
        f"{best_x[1]:.3f}); a run reaches it when its final mean loss is within "
        f"{REACHED_TOL:g}")
  methods = {f"ConicGrad (c={args.c:g})": cg.conicgrad(args.c, num_tasks=2),
             "Mean gradient": cg.linear_scalarization("mean", num_tasks=2)}
  results, reached = {}, {}
  for name, method in methods.items():
    t0 = time.perf_counter()
    paths, final = run(method, args.steps)
    elapsed = time.perf_counter() - t0
    results[name] = (paths, final)
    print(f"\n{name}  ({args.steps} Adam steps x 5 starts, {elapsed:.1f} s incl. compile)")
    hits = 0
    for start, losses in zip(STARTS, final):
      mean = float(np.mean(losses))
      hit = mean <= best + REACHED_TOL
      hits += hit
      print(f"  start ({start[0]:5.1f}, {start[1]:5.1f}): losses ({losses[0]:8.4f}, "
            f"{losses[1]:8.4f})  mean {mean:8.4f}  "
            f"{'reached global minimum' if hit else 'did NOT reach global minimum'}")
    reached[name] = hits
    print(f"  -> {hits}/5 runs reached the global minimum of the mean loss")
  plot(results, best_x, args.out)
  print(f"\nsaved {args.out}")
  return reached


if __name__ == "__main__":
  main()
