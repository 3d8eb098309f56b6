"""Multi-task reinforcement learning: shared-trunk PPO on four gymnax control tasks.

The task family: CartPole-v1, Acrobot-v1, a CartPole with a long pole and a weak
push (pole length 1.0 instead of 0.5, force 5 instead of 10) and an Acrobot
whose second link is twice as heavy (mass 2). One policy network serves all
four: a shared tanh MLP trunk on the observation (zero-padded to 6 entries)
and a one-hot task id, and for each task its own actor head (its own number of
actions) and critic head.

Training (PPO, Schulman et al. 2017, as in PureJaxRL): each iteration collects
``num_steps`` steps in ``num_envs`` environments per task, computes GAE
advantages per task, and takes ``epochs × minibatches`` gradient steps. At each
step every task has its own PPO loss on its own minibatch (clipped surrogate +
``vf_coef``·value loss − ``ent_coef``·entropy); ``cg.value_and_task_grads``
with ``shared=`` (the trunk) turns the K losses into stacked task gradients of
the trunk (the heads get their own task's gradient), the balancing method
aggregates them and Adam takes the step. Methods that read ``losses=`` get each
task's critic loss (positive and decreasing as a task is learnt; the PPO loss
itself changes sign, which loss-ratio methods such as FAMO cannot take).
Training is one jitted ``lax.scan`` over iterations, run in ``chunks`` calls
(for the time measurement and progress), vmapped over seeds.

Single-task baselines (STL) train the same network (trunk + one task's heads)
on that task alone with the same protocol. A uniformly random policy gives
each task's floor. Metric: the task's return over the last tenth of training
(mean return of the episodes that end there), normalised as
n_k = (R_k − R_random,k) / (R_STL,k − R_random,k) (1 = the single-task PPO,
0 = random). Δm% = (1/K) Σ_k (1 − n_k)·100 (the supervised suite's Δm% on the
normalised returns; lower is better) and the mean rank over tasks. A task whose
single-task baseline does not beat random by max(1, 10 % of |R_random|) (e.g. the heavy
Acrobot within a short budget) cannot be normalised: it is reported in raw
returns and left out of Δm% and the ranks.

Reproduce the committed table (resumes from the per-run files):
``python -m benchmarks mtrl`` (12 methods × 5 seeds, 200 iterations =
204,800 env steps per task).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import conicgrad_jax as cg
from benchmarks import store as store_m
from benchmarks import supervised
from benchmarks import timing

METHODS = ("linear_scalarization", "mgda", "pcgrad", "cagrad", "nash_mtl", "famo", "fairgrad",
           "upgrad", "gsmgrad", "conicgrad", "mtac_ca", "mtac_fc")
QUICK_METHODS = ("linear_scalarization", "conicgrad")
OBS_DIM = 6


# ------------------------------------------------------------------------ tasks

class EnvTask(NamedTuple):
  name: str
  env: object
  params: object
  num_actions: int
  obs_dim: int


# Gym's "solved" return thresholds (reward_threshold of CartPole-v1 and Acrobot-v1),
# used for the variants too: the secondary score that needs no baseline.
SOLVED = {"CartPole-v1": 475.0, "Acrobot-v1": -100.0, "CartPole-long-weak": 475.0,
          "Acrobot-heavy": -100.0}


def task_family():
  """The four tasks: CartPole-v1, Acrobot-v1, long-pole weak-force CartPole, heavy Acrobot."""
  import gymnax

  cart, cart_p = gymnax.make("CartPole-v1")
  acro, acro_p = gymnax.make("Acrobot-v1")
  long_p = cart_p.replace(length=1.0, polemass_length=cart_p.masspole * 1.0, force_mag=5.0)
  heavy_p = acro_p.replace(link_mass_2=2.0)
  return (EnvTask("CartPole-v1", cart, cart_p, 2, 4),
          EnvTask("Acrobot-v1", acro, acro_p, 3, 6),
          EnvTask("CartPole-long-weak", cart, long_p, 2, 4),
          EnvTask("Acrobot-heavy", acro, heavy_p, 3, 6))


class Config(NamedTuple):
  """The PPO protocol (every method and the STL runs share it)."""
  iterations: int = 200
  num_envs: int = 16
  num_steps: int = 64
  epochs: int = 4
  minibatches: int = 4
  lr: float = 1e-3
  gamma: float = 0.99
  gae_lambda: float = 0.95
  clip: float = 0.2
  ent_coef: float = 0.01
  vf_coef: float = 0.5
  hidden: int = 64
  chunks: int = 5

  @property
  def steps_per_task(self) -> int:
    return self.iterations * self.num_envs * self.num_steps


# ---------------------------------------------------------------------- network

def _dense(key, n_in, n_out, scale):
  w = jax.nn.initializers.orthogonal(scale)(key, (n_in, n_out), jnp.float32)
  return {"w": w, "b": jnp.zeros((n_out,), jnp.float32)}


def init_params(key, tasks, family_size, hidden):
  keys = jax.random.split(key, 2 + 2 * len(tasks))
  n_in = OBS_DIM + family_size
  trunk = [_dense(keys[0], n_in, hidden, np.sqrt(2)), _dense(keys[1], hidden, hidden, np.sqrt(2))]
  heads = [{"actor": _dense(keys[2 + 2 * i], hidden, t.num_actions, 0.01),
            "critic": _dense(keys[3 + 2 * i], hidden, 1, 1.0)} for i, t in enumerate(tasks)]
  return {"trunk": trunk, "heads": heads}


def is_shared(path, _leaf):
  return getattr(path[0], "key", None) == "trunk"


def features(obs, task_id, family_size):
  pad = jnp.zeros(obs.shape[:-1] + (OBS_DIM - obs.shape[-1],), obs.dtype)
  onehot = jnp.broadcast_to(jax.nn.one_hot(task_id, family_size), obs.shape[:-1] + (family_size,))
  return jnp.concatenate([obs, pad, onehot], axis=-1)


def forward(params, i, x):
  """Logits and value of head ``i`` on features ``x``."""
  h = x
  for layer in params["trunk"]:
    h = jnp.tanh(h @ layer["w"] + layer["b"])
  head = params["heads"][i]
  logits = h @ head["actor"]["w"] + head["actor"]["b"]
  value = (h @ head["critic"]["w"] + head["critic"]["b"])[..., 0]
  return logits, value


# ------------------------------------------------------------------------- PPO

class Transition(NamedTuple):
  x: jax.Array
  action: jax.Array
  logp: jax.Array
  value: jax.Array
  reward: jax.Array
  done: jax.Array


class Carry(NamedTuple):
  params: object
  opt_state: object
  env_states: tuple
  obs: tuple
  ep_return: jax.Array   # (K, num_envs)
  key: jax.Array


def make_method(name, k, seed):
  """The balancing transformation (``stl`` = plain gradient descent on the one task)."""
  if name == "stl":
    return cg.linear_scalarization(shared=is_shared, num_tasks=k)
  factory = cg.methods()[name].factory
  kwargs = {"shared": is_shared, "num_tasks": k}
  if "seed" in inspect.signature(factory).parameters:
    kwargs["seed"] = seed
  return factory(**kwargs)


def generalized_advantages(rewards, values, dones, last_value, gamma, gae_lambda):
  """GAE(γ, λ) over a rollout (time on axis 0): returns (advantages, value targets).

  δ_t = r_t + γ V_{t+1}(1 − done_t) − V_t and A_t = δ_t + γλ(1 − done_t) A_{t+1},
  with V_T = ``last_value`` and A_T = 0; the targets are A_t + V_t (Schulman et al.,
  "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
  2016; an episode end cuts both sums, as PureJaxRL does).
  """
  def back(carry, step):
    next_adv, next_value = carry
    reward, value, done = step
    delta = reward + gamma * next_value * (1 - done) - value
    adv = delta + gamma * gae_lambda * (1 - done) * next_adv
    return (adv, value), adv

  _, adv = jax.lax.scan(back, (jnp.zeros_like(last_value), last_value),
                        (rewards, values, dones), reverse=True)
  return adv, adv + values


def make_trainer(tasks, task_ids, family_size, method, cfg: Config):
  """``init(seed) -> carry`` and the jitted ``chunk(carry) -> (carry, returns, episodes)``.

  ``chunk`` runs ``cfg.iterations // cfg.chunks`` PPO iterations (a ``lax.scan``)
  and returns per iteration and task the summed returns and the number of the
  episodes that ended in it.
  """
  k = len(tasks)
  opt = optax.chain(make_method(method, k, 0), optax.adam(cfg.lr, eps=1e-5))
  n_batch = cfg.num_envs * cfg.num_steps
  mb_size = n_batch // cfg.minibatches

  def task_loss(params, i, mb, adv, target):
    logits, value = forward(params, i, mb.x)
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, mb.action[:, None], axis=-1)[:, 0]
    ratio = jnp.exp(logp - mb.logp)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    actor = -jnp.mean(jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip, 1 + cfg.clip) * adv))
    v_clipped = mb.value + jnp.clip(value - mb.value, -cfg.clip, cfg.clip)
    critic = 0.5 * jnp.mean(jnp.maximum((value - target) ** 2, (v_clipped - target) ** 2))
    entropy = -jnp.mean(jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1))
    return actor + cfg.vf_coef * critic - cfg.ent_coef * entropy, critic

  def losses_fn(params, batches):
    out = [task_loss(params, i, *b) for i, b in enumerate(batches)]
    return jnp.stack([o[0] for o in out]), jnp.stack([o[1] for o in out])

  grads_fn = cg.value_and_task_grads(losses_fn, has_aux=True, shared=is_shared)

  def init(seed):
    key = jax.random.PRNGKey(seed)
    key, pk = jax.random.split(key)
    params = init_params(pk, tasks, family_size, cfg.hidden)
    opt_state = optax.chain(make_method(method, k, seed), optax.adam(cfg.lr, eps=1e-5)).init(params)
    env_states, obs = [], []
    for t in tasks:
      key, rk = jax.random.split(key)
      o, s = jax.vmap(t.env.reset, in_axes=(0, None))(jax.random.split(rk, cfg.num_envs), t.params)
      env_states.append(s)
      obs.append(o)
    return Carry(params, opt_state, tuple(env_states), tuple(obs),
                 jnp.zeros((k, cfg.num_envs), jnp.float32), key)

  def rollout(carry):
    def env_step(c, _):
      params, env_states, obs, ep_return, key = c
      new_states, new_obs, trans, rets, counts, new_ep = [], [], [], [], [], []
      for i, t in enumerate(tasks):
        key, ak, sk = jax.random.split(key, 3)
        x = features(obs[i], task_ids[i], family_size)
        logits, value = forward(params, i, x)
        action = jax.random.categorical(ak, logits)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], -1)[:, 0]
        o, s, r, term, trunc, _ = jax.vmap(t.env.step, in_axes=(0, 0, 0, None))(
            jax.random.split(sk, cfg.num_envs), env_states[i], action, t.params)
        d = term | trunc   # an episode end (time limits are not bootstrapped, as PureJaxRL)
        ret = ep_return[i] + r
        rets.append(jnp.sum(jnp.where(d, ret, 0.0)))
        counts.append(jnp.sum(d))
        new_ep.append(jnp.where(d, 0.0, ret))
        new_states.append(s)
        new_obs.append(o)
        trans.append(Transition(x, action, logp, value, r, d.astype(jnp.float32)))
      c = (params, tuple(new_states), tuple(new_obs), jnp.stack(new_ep), key)
      return c, (tuple(trans), jnp.stack(rets), jnp.stack(counts))

    c0 = (carry.params, carry.env_states, carry.obs, carry.ep_return, carry.key)
    (_, env_states, obs, ep_return, key), (trans, rets, counts) = jax.lax.scan(
        env_step, c0, None, length=cfg.num_steps)
    return carry._replace(env_states=env_states, obs=obs, ep_return=ep_return, key=key), \
        trans, rets.sum(0), counts.sum(0)

  def iteration(carry, _):
    carry, trans, rets, counts = rollout(carry)
    data = []
    for i in range(k):
      x_last = features(carry.obs[i], task_ids[i], family_size)
      _, last_value = forward(carry.params, i, x_last)
      adv, target = generalized_advantages(trans[i].reward, trans[i].value, trans[i].done,
                                           last_value, cfg.gamma, cfg.gae_lambda)
      flat = jax.tree_util.tree_map(lambda a: a.reshape((n_batch,) + a.shape[2:]),
                                    (trans[i], adv, target))
      data.append(flat)

    def epoch(c, _):
      params, opt_state, key = c
      key, *pks = jax.random.split(key, k + 1)
      shuffled = [jax.tree_util.tree_map(
          lambda a: a[jax.random.permutation(pk, n_batch)].reshape(
              (cfg.minibatches, mb_size) + a.shape[1:]), d) for pk, d in zip(pks, data)]

      def minibatch(c2, batches):
        params, opt_state = c2
        (losses, critic), g = grads_fn(params, batches)
        u, opt_state = opt.update(g, opt_state, params, losses=critic)
        return (optax.apply_updates(params, u), opt_state), losses

      (params, opt_state), losses = jax.lax.scan(minibatch, (params, opt_state), tuple(shuffled))
      return (params, opt_state, key), losses

    (params, opt_state, key), _ = jax.lax.scan(
        epoch, (carry.params, carry.opt_state, carry.key), None, length=cfg.epochs)
    weights = getattr(opt_state[0], "weights", jnp.full((k,), jnp.nan))
    return carry._replace(params=params, opt_state=opt_state, key=key), (rets, counts, weights)

  length = cfg.iterations // cfg.chunks

  @jax.jit
  @jax.vmap
  def chunk(carry):
    return jax.lax.scan(iteration, carry, None, length=length)

  return init, chunk


def train(tasks, task_ids, family_size, method, seeds, cfg: Config) -> list[dict]:
  """Trains ``method`` for every seed at once (vmapped); one result dict per seed."""
  if cfg.iterations % cfg.chunks:
    raise ValueError("`iterations` must be a multiple of `chunks`.")
  init, chunk = make_trainer(tasks, task_ids, family_size, method, cfg)
  carries = [init(s) for s in seeds]
  carry = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *carries)
  rets, counts, weights, times = [], [], [], []
  t_start = time.perf_counter()
  for _ in range(cfg.chunks):
    t0 = time.perf_counter()
    carry, (r, c, w) = chunk(carry)
    r, c, w = jax.device_get((r, c, w))
    times.append(time.perf_counter() - t0)
    rets.append(r)
    counts.append(c)
    weights.append(w)
  wall = time.perf_counter() - t_start
  rets, counts, weights = (np.concatenate(a, axis=1) for a in (rets, counts, weights))
  # Calls after the second run the compiled scan (earlier ones may compile).
  steady = times[2:] if len(times) > 2 else times[-1:]
  per_iter = float(np.mean(steady)) / (cfg.iterations // cfg.chunks)
  tail = max(1, cfg.iterations // 10)
  out = []
  for j, s in enumerate(seeds):
    curve = rets[j] / np.maximum(counts[j], 1)
    curve = np.where(counts[j] > 0, curve, np.nan)
    n_tail = counts[j, -tail:].sum(0)
    final = np.where(n_tail > 0, rets[j, -tail:].sum(0) / np.maximum(n_tail, 1), np.nan)
    out.append({"method": method, "seed": int(s), "tasks": [t.name for t in tasks],
                "final_return": final.tolist(), "curve": np.round(curve, 3).tolist(),
                "weights_curve": np.round(weights[j], 4).tolist(),
                "seconds_per_iteration": per_iter / len(seeds),
                "wall_time_per_run_s": per_iter * cfg.iterations / len(seeds),
                "wall_time_batch_s": wall, "first_call_s": times[0],
                "seeds_in_batch": len(seeds)})
  return out


def random_returns(tasks, steps=2000, num_envs=16, seed=0) -> list[float]:
  """Mean episode return of a uniformly random policy, per task."""
  out = []
  for i, t in enumerate(tasks):
    key = jax.random.PRNGKey(seed + i)
    obs, state = jax.vmap(t.env.reset, in_axes=(0, None))(jax.random.split(key, num_envs),
                                                           t.params)

    def step(c, key, t=t):
      state, ret, tot, n = c
      ak, sk = jax.random.split(key)
      a = jax.random.randint(ak, (num_envs,), 0, t.num_actions)
      _, state, r, term, trunc, _ = jax.vmap(t.env.step, in_axes=(0, 0, 0, None))(
          jax.random.split(sk, num_envs), state, a, t.params)
      d = term | trunc
      ret = ret + r
      return (state, jnp.where(d, 0.0, ret), tot + jnp.sum(jnp.where(d, ret, 0.0)),
              n + jnp.sum(d)), None

    c0 = (state, jnp.zeros(num_envs), jnp.zeros(()), jnp.zeros((), jnp.int32))
    (_, _, tot, n), _ = jax.jit(lambda c, ks: jax.lax.scan(step, c, ks))(
        c0, jax.random.split(jax.random.fold_in(key, 1), steps))
    out.append(float(tot / jnp.maximum(n, 1)))
  return out


# ---------------------------------------------------------------------- summary

def normalise(returns, random, stl):
  """(R − R_random)/(R_STL − R_random), task by task (last axis)."""
  returns, random, stl = (np.asarray(a, np.float64) for a in (returns, random, stl))
  return (returns - random) / (stl - random)


class _Names(NamedTuple):
  task_names: tuple
  higher_is_better: tuple
  metric_name: str
  name: str


def learnt(stl_raw, random) -> np.ndarray:
  """Tasks whose single-task baseline beats random by 1 return unit and 10 % of |R_random|.

  Elsewhere the normalisation divides by a small, noisy difference: such a task
  is left out of Δm% and the ranks and reported in raw returns.
  """
  stl_raw, random = np.asarray(stl_raw, float), np.asarray(random, float)
  return stl_raw - random > np.maximum(1.0, 0.1 * np.abs(random))


def summarise(names, results, method_names, seeds, random, solved=None):
  """Normalised returns, Δm% and mean ranks (``supervised.summarise`` on normalised returns).

  Only tasks the STL baseline learnt (:func:`learnt`) enter the normalised
  columns, Δm% and the ranks; every task's raw returns are kept. With
  ``solved`` (a return per task), every run also gets the secondary score
  mean_k (R_k − R_random,k)/(solved_k − R_random,k) over all tasks, and each
  method its mean and rank on it.
  """
  k = len(names)
  stl_raw = np.array([np.mean([results[f"stl_{i}", s]["final_return"][0] for s in seeds])
                      for i in range(k)])
  ok = learnt(stl_raw, random)
  idx = np.flatnonzero(ok)
  rnd, ref = np.asarray(random, float)[idx], stl_raw[idx]
  norm = {}
  for m in method_names:
    for s in seeds:
      norm[m, s] = {"test_metrics": normalise(np.asarray(results[m, s]["final_return"])[idx],
                                              rnd, ref).tolist(),
                    "time_per_step_s": results[m, s]["wall_time_per_run_s"]}
  for j, i in enumerate(idx):
    for s in seeds:
      row = [np.nan] * len(idx)
      row[j] = float(normalise(results[f"stl_{i}", s]["final_return"][0], rnd[j], ref[j]))
      norm[f"stl_{j}", s] = {"test_metrics": row, "time_per_step_s": None}
  task = _Names(tuple(names[i] for i in idx), (True,) * len(idx), "normalised return", "mtrl")
  summary = supervised.summarise(task, norm, method_names, seeds)
  for m in method_names:
    raw = np.array([results[m, s]["final_return"] for s in seeds])
    row = summary["methods"][m]
    row["raw_return_mean"] = raw.mean(0).tolist()
    row["raw_return_sem"] = supervised.standard_error(raw)
    row["wall_time_per_run_s"] = row.pop("time_per_step_s")
    row.pop("time_per_step_in_runs_s", None)
    row.pop("time_ratio_to_ls", None)
  stl_time = [float(np.median([results[f"stl_{i}", s]["wall_time_per_run_s"] for s in seeds]))
              for i in range(k)]
  stl_all = np.array([[results[f"stl_{i}", s]["final_return"][0] for i in range(k)]
                      for s in seeds])
  if solved is not None:
    def score(m, s_):
      return float(np.mean(normalise(results[m, s_]["final_return"], random, solved)))

    means = {}
    for m in method_names:
      v = np.array([score(m, s_) for s_ in seeds])
      summary["methods"][m]["solved_score"] = float(v.mean())
      summary["methods"][m]["solved_score_sem"] = supervised.standard_error(v)
      means[m] = v.mean()
    ranks = supervised.mean_ranks([[means[m]] for m in method_names], (True,))
    for m, r in zip(method_names, ranks):
      summary["methods"][m]["solved_score_rank"] = float(r)
    stl_scores = [[float(normalise(results[f"stl_{i}", s_]["final_return"][0], random[i],
                                   solved[i])) for s_ in seeds] for i in range(k)]
    summary["stl_solved_score"] = float(np.mean(stl_scores))
    summary["solved_return"] = list(solved)
  summary.update({"stl_raw_return": stl_raw.tolist(),
                  "stl_raw_return_sem": supervised.standard_error(stl_all),
                  "random_return": list(random), "normalised_tasks": [names[i] for i in idx],
                  "stl_wall_time_per_run_s": stl_time})
  summary.pop("stl")
  return summary


def _cells(means, sems, fmt="{:.1f}") -> list:
  """"mean ± s.e." per task (the mean alone for one seed)."""
  return [supervised.plus_minus(mu, se, fmt, fmt)
          for mu, se in zip(means, sems or [None] * len(means))]


def markdown_table(names, summary) -> str:
  """Normalised return (mean ± s.e.) per learnt task, raw return for the others."""
  ok = [n in summary["normalised_tasks"] for n in names]
  cols = [n if o else f"{n} (raw; STL ≈ random, not normalised)" for n, o in zip(names, ok)]
  head = ("| method | " + " | ".join(cols) + " | mean normalised | Δm% ↓ | mean rank ↓ | "
          "s/run |")
  lines = [head, "|" + "---|" * (len(names) + 5)]
  lines.append("| random policy (raw return) | "
               + " | ".join(f"{v:.1f}" for v in summary["random_return"]) + " | 0 | — | — | — |")
  lines.append("| STL PPO (raw return) | "
               + " | ".join(_cells(summary["stl_raw_return"], summary["stl_raw_return_sem"]))
               + " | 1 | 0 | — | " + " / ".join(f"{t:.3g}"
                                               for t in summary["stl_wall_time_per_run_s"])
               + " |")
  order = sorted(summary["methods"].items(), key=lambda kv: kv[1]["delta_m_pct"])
  for m, r in order:
    normed = iter(_cells(r["mean"], r["sem"], "{:.2f}"))
    raw = _cells(r["raw_return_mean"], r["raw_return_sem"])
    cells = [next(normed) if o else c for o, c in zip(ok, raw)]
    dm = supervised.plus_minus(r["delta_m_pct"], r["delta_m_sem"], "{:.1f}", "{:.1f}")
    lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(r['mean']):.2f} | "
                 f"{dm} | {r['mean_rank']:.1f} | "
                 f"{r['wall_time_per_run_s']:.3g} |")
  return "\n".join(lines)


def raw_table(names, summary) -> str:
  """Raw returns of every task (mean ± s.e.) and the solved-threshold score, when computed."""
  has = "solved_score" in next(iter(summary["methods"].values()))
  head = "| method | " + " | ".join(names) + (" | score vs solved ↑ | rank |" if has else " |")
  lines = [head, "|" + "---|" * (len(names) + 1 + 2 * has)]
  lines.append("| random policy | " + " | ".join(f"{v:.1f}" for v in summary["random_return"])
               + (" | 0 | — |" if has else " |"))
  if has:
    lines.append("| solved (Gym threshold) | "
                 + " | ".join(f"{v:.0f}" for v in summary["solved_return"]) + " | 1 | — |")
  lines.append("| STL PPO | " + " | ".join(
      _cells(summary["stl_raw_return"], summary["stl_raw_return_sem"]))
      + (f" | {summary['stl_solved_score']:.2f} | — |" if has else " |"))
  key = (lambda kv: -kv[1]["solved_score"]) if has else (lambda kv: kv[1]["delta_m_pct"])
  for m, r in sorted(summary["methods"].items(), key=key):
    cells = _cells(r["raw_return_mean"], r["raw_return_sem"])
    tail = (" | " + supervised.plus_minus(r["solved_score"], r["solved_score_sem"], "{:.2f}",
                                         "{:.2f}") + " | "
            f"{r['solved_score_rank']:g} |") if has else " |"
    lines.append(f"| {m} | " + " | ".join(cells) + tail)
  return "\n".join(lines)



def _mean_and_standard_error(curves):
  """Mean and standard error (ddof = 1, over the seeds with a value) of each column."""
  count = np.sum(~np.isnan(curves), axis=0)
  spread = np.full(curves.shape[1], np.nan)
  several = count > 1
  spread[several] = np.nanstd(curves[:, several], axis=0, ddof=1) / np.sqrt(count[several])
  return np.nanmean(curves, axis=0), spread

def plot(names, results, method_names, seeds, cfg: Config, summary, path):
  import warnings

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  warnings.filterwarnings("ignore", category=RuntimeWarning)   # NaN slices: no episode ended yet
  k = len(names)
  x = (np.arange(cfg.iterations) + 1) * cfg.num_envs * cfg.num_steps
  fig, axes = plt.subplots(1, k + 1, figsize=(4.2 * (k + 1), 4.0))
  cmap = plt.get_cmap("tab20")
  colours = [cmap(j) for j in range(20) if j not in (6, 7)]   # red is ConicGrad's
  window = max(1, cfg.iterations // 40)
  smooth = lambda c: np.array([np.nanmean(c[max(0, j - window + 1):j + 1]) for j in range(len(c))])
  series = [(m, [results[m, s]["curve"] for s in seeds], None) for m in method_names]
  for i in range(k):
    ax = axes[i]
    for n, (m, curves, _) in enumerate(series):
      c = np.array([smooth(np.asarray(cv, float)[:, i]) for cv in curves])
      mu, se = _mean_and_standard_error(c)
      style = (dict(color="tab:red", lw=2) if m == "conicgrad"
               else dict(color=colours[n % len(colours)], lw=1))
      ax.plot(x, mu, label=m, **style)
      ax.fill_between(x, mu - se, mu + se, alpha=0.15, color=style["color"])
    c = np.array([smooth(np.asarray(results[f"stl_{i}", s]["curve"], float)[:, 0]) for s in seeds])
    mu, se = _mean_and_standard_error(c)
    ax.plot(x, mu, color="k", ls="--", lw=1.5, label="STL PPO")
    ax.fill_between(x, mu - se, mu + se, alpha=0.15, color="k")
    ax.axhline(summary["random_return"][i], color="grey", ls=":", lw=1, label="random")
    ax.set_title(names[i], fontsize=10)
    ax.set_xlabel("env steps (this task)")
    if i == 0:
      ax.set_ylabel("episode return (mean ± s.e. over seeds)")
  supervised.delta_m_bars(axes[k], summary, "Δm% vs STL on normalised return (↓)")
  axes[0].legend(fontsize=6, ncol=2, loc="upper left")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


# -------------------------------------------------------------------------- main

def _claim(runs, name) -> bool:
  """Marks ``name`` as trained by this process; False if a live process holds it.

  Several processes may share one run folder (each skips what another is training).
  """
  path = os.path.join(runs.folder, f"{name}.claim")
  try:
    with open(path) as f:
      pid = int(f.read().strip() or 0)
    if pid != os.getpid():
      os.kill(pid, 0)                   # raises if that process is gone
      return False
  except (FileNotFoundError, ProcessLookupError, ValueError):
    pass
  except PermissionError:
    return False
  with open(path, "w") as f:
    f.write(str(os.getpid()))
  return True


def run_all(tasks, method_names, seeds, cfg: Config, runs, baselines=True) -> dict:
  """Every method (all seeds at once) and the STL runs, resumable through ``runs``."""
  k = len(tasks)
  jobs = [(f"stl_{i}", [tasks[i]], [i]) for i in range(k)] if baselines else []
  jobs += [(m, list(tasks), list(range(k))) for m in method_names]
  results = {}
  for m, ts, ids in jobs:
    # The seeds train as one vmapped batch, and rounding depends on the batch: when
    # one is missing, or the stored ones come from different batches, the whole batch
    # trains again, so that every seed's run is the one the same batch gives.
    stored = [runs.get(f"{m}_seed{s}") for s in seeds]
    batches = {tuple(r.get("seed_batch") or ()) for r in stored if r is not None}
    todo = list(seeds) if None in stored or len(batches) > 1 else []
    if todo and not _claim(runs, m):
      print(f"{m}: being trained by another process; skipped", flush=True)
      todo = []
    if todo:
      t0 = time.perf_counter()
      method = "stl" if m.startswith("stl_") else m
      for r in train(ts, ids, k, method, todo, cfg):
        runs.put(f"{m}_seed{r['seed']}", {**r, "method": m, "seed_batch": list(todo)})
      print(f"{m}: {len(todo)} seeds in {time.perf_counter() - t0:.0f} s", flush=True)
    for s in seeds:
      results[m, s] = runs.get(f"{m}_seed{s}")
  return results


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog="python -m benchmarks mtrl")
  parser.add_argument("--methods", default=None, help="comma-separated; default: the 12 of the "
                      "comparison (" + ",".join(METHODS) + ")")
  parser.add_argument("--seeds", type=int, default=5)
  parser.add_argument("--iterations", type=int, default=None,
                      help="PPO iterations (each num_envs × num_steps env steps per task)")
  parser.add_argument("--chunks", type=int, default=None)
  parser.add_argument("--quick", action="store_true")
  parser.add_argument("--runs-only", action="store_true",
                      help="only train (and store) the methods' runs: no baselines, no summary "
                      "(to share the runs among processes; a final call without it summarises)")
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  methods = (args.methods.split(",") if args.methods
             else list(QUICK_METHODS) if args.quick else list(METHODS))
  unknown = set(methods) - set(cg.methods())
  if unknown:
    parser.error(f"unknown methods {sorted(unknown)}")
  return args, methods


def main(argv=None):
  args, methods = parse_args(argv)
  if args.quick:
    cfg = Config(iterations=args.iterations or 3, num_envs=8, num_steps=32, epochs=2,
                 minibatches=2, hidden=32, chunks=args.chunks or 3)
    seeds = tuple(range(min(args.seeds, 2)))
  else:
    default = Config()
    cfg = Config(iterations=args.iterations or default.iterations,
                 chunks=args.chunks or default.chunks)
    seeds = tuple(range(args.seeds))
  tasks = task_family()
  if args.quick:   # CI: the two CartPoles (episodes end within the few steps; small compiles)
    tasks = (tasks[0], tasks[2])
  names = [t.name for t in tasks]
  tag = "mtrl_quick" if args.quick else "mtrl"
  # The protocol names the folder of per-run results, so a rerun with another
  # budget never resumes from stale runs.
  runs = store_m.RunStore(args.out, f"{tag}_it{cfg.iterations}_n{cfg.num_envs}x{cfg.num_steps}"
                          f"_e{cfg.epochs}_mb{cfg.minibatches}_lr{cfg.lr:g}_h{cfg.hidden}")
  random = runs.get("random_policy")
  if random is None:
    random = runs.put("random_policy", {"returns": random_returns(
        tasks, steps=600 if args.quick else 2000)})
  random = random["returns"]
  results = run_all(tasks, methods, seeds, cfg, runs, baselines=not args.runs_only)
  if args.runs_only or any(r is None for r in results.values()):
    return None
  summary = summarise(names, results, methods, seeds, random,
                      solved=[SOLVED[n] for n in names])
  with open(os.path.join(args.out, f"{tag}.json"), "w") as f:
    json.dump({"benchmark": "mtrl", "quick": args.quick, "tasks": names,
               "protocol": {**cfg._asdict(), "steps_per_task": cfg.steps_per_task},
               "seeds": list(seeds), "machine": timing.machine(),
               "library": store_m.library_fingerprint(),
               "runs_from_other_library_versions": runs.from_other_libraries(),
               **summary}, f, indent=1)
  plot(names, results, methods, seeds, cfg, summary, os.path.join(args.out, f"{tag}.png"))
  table = (markdown_table(names, summary)
           + "\n\nRaw returns (last tenth of training, mean ± s.e. over seeds); score vs "
           "solved = mean over the tasks of (R − R_random)/(R_solved − R_random):\n\n"
           + raw_table(names, summary)
           + "\n\ns/run: seconds per run from the steady-state chunk calls (the third and "
           "later; seeds vmapped together, batch time / seeds), measured during the runs "
           "under whatever else the machine was running: compare them only between runs "
           "made side by side on a quiet machine.")
  with open(os.path.join(args.out, f"{tag}.md"), "w") as f:
    f.write(table + "\n")
  print(table)
  return summary


if __name__ == "__main__":
  main()
