"""A one-image training dashboard from a logged history of :class:`ConflictDiagnostics`.

Needs matplotlib (``pip install "conicgrad-jax[dashboard]"``), imported only
when a figure is drawn. Typical use::

  tx = cg.with_diagnostics(cg.conicgrad(shared=is_shared), shared=is_shared)
  history = []
  for step in ...:
    ...
    updates, state = tx.update(grads, state, params, losses=losses)
    history.append(jax.device_get(state.diagnostics))
  cg.dashboard.plot_dashboard(history, "dashboard.png", task_names=["left", "right"])

Panels: task losses, weights, the pairwise cosines as a heat map over steps
(one row per task pair), the angle of the update to each task gradient and to
the mean gradient, gradient norms with the magnitude similarity, and the
fraction of conflicting pairs with G's condition number.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from conicgrad_jax.diagnostics import ConflictDiagnostics


def stack_history(history) -> ConflictDiagnostics:
  """A list of per-step diagnostics (or an already stacked one) as NumPy arrays with a step axis."""
  if isinstance(history, ConflictDiagnostics):
    stacked = ConflictDiagnostics(*[np.asarray(x) for x in history])
    if stacked.weights.ndim != 2:
      raise ValueError("A single ConflictDiagnostics must be stacked over steps: weights of "
                       f"shape (T, K), got {stacked.weights.shape}.")
    return stacked
  history = list(history)
  if not history:
    raise ValueError("`history` is empty.")
  return ConflictDiagnostics(*[np.stack([np.asarray(h[i]) for h in history])
                               for i in range(len(ConflictDiagnostics._fields))])


def running_mean(y, window: int):
  """Trailing mean over ``window`` steps along axis 0 (shorter at the start).

  Non-finite entries (the NaN diagnostics of a skipped step) are left out of
  the mean; a window without a finite entry gives NaN, a gap in the plot.
  """
  y = np.asarray(y, np.float64)
  if window <= 1:
    return y
  finite = np.isfinite(y)

  def trailing_sum(v):
    c = np.cumsum(v, axis=0)
    return c - np.concatenate([np.zeros((window,) + v.shape[1:]), c[:-window]], axis=0)[:len(v)]

  sums = trailing_sum(np.where(finite, y, 0.0))
  counts = trailing_sum(finite.astype(np.float64))
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)


def _matplotlib():
  """matplotlib, for figures built without pyplot: the user's backend is left as it is."""
  try:
    import matplotlib
    import matplotlib.figure
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("The dashboard needs matplotlib: pip install 'conicgrad-jax[dashboard]'.") from e
  return matplotlib


def plot_dashboard(history, path: Optional[str] = None, *,
                   task_names: Optional[Sequence[str]] = None, losses=None, steps=None,
                   title: Optional[str] = None, smooth: Optional[int] = None, dpi: int = 110):
  """Draws the dashboard of a logged history; writes it to ``path`` (PNG) if given.

  Args:
    history: a list of :class:`~conicgrad_jax.diagnostics.ConflictDiagnostics`
      (one per step, e.g. ``state.diagnostics`` of :func:`with_diagnostics`),
      or one stacked over a leading step axis (e.g. from ``lax.scan``).
    path: where to save the PNG; nothing is saved when ``None``.
    task_names: K names for the legends (indices by default).
    losses: optional (T, K) task losses; by default the losses stored in the
      diagnostics (their panel is left empty when none were logged).
    steps: optional (T,) step numbers for the x axis (0..T−1 by default).
    title: the figure's title.
    smooth: window of the trailing running mean drawn over the raw (faint)
      per-step curves; ``None`` picks T // 40, 1 draws the raw curves only.
      The conflict fraction is drawn as its running mean (with K = 2 it is
      0 or 1 per step).
    dpi: resolution of the saved PNG.

  Returns:
    The matplotlib ``Figure``.
  """
  mpl = _matplotlib()
  h = stack_history(history)
  t, k = h.weights.shape
  names = list(task_names) if task_names is not None else [str(i) for i in range(k)]
  if len(names) != k:
    raise ValueError(f"`task_names` has {len(names)} names for K = {k} tasks.")
  x = np.arange(t) if steps is None else np.asarray(steps)
  if x.shape != (t,):
    raise ValueError(f"`steps` has shape {x.shape}; expected ({t},), one per recorded step.")
  loss = h.losses if losses is None else np.asarray(losses)
  if loss.shape != (t, k):
    raise ValueError(f"`losses` has shape {loss.shape}; expected ({t}, {k}).")
  colors = mpl.colormaps["tab10"]
  window = max(1, t // 40) if smooth is None else int(smooth)

  def lines(ax, y, color, label, **kw):
    if window > 1:
      ax.plot(x, y, color=color, lw=0.6, alpha=0.3, **kw)
      ax.plot(x, running_mean(y, window), color=color, lw=1.4, label=label, **kw)
    else:
      ax.plot(x, y, color=color, lw=1.2, label=label, **kw)

  fig = mpl.figure.Figure(figsize=(12, 10.5), layout="constrained")
  axes = fig.subplots(3, 2)
  ax = axes[0, 0]
  if np.any(np.isfinite(loss)):
    for i, n in enumerate(names):
      lines(ax, loss[:, i], colors(i % 10), n)
    if np.all(loss[np.isfinite(loss)] > 0):
      ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=min(k, 4))
  else:
    ax.text(0.5, 0.5, "no losses logged", ha="center", va="center", transform=ax.transAxes)
  ax.set_title("task losses")
  ax.set_xlabel("step")

  ax = axes[0, 1]
  for i, n in enumerate(names):
    lines(ax, h.weights[:, i], colors(i % 10), n)
  ax.set_title("combination weights")
  ax.set_xlabel("step")
  ax.legend(fontsize=8, ncol=min(k, 4))

  ax = axes[1, 0]
  iu = np.triu_indices(k, 1)
  if len(iu[0]):
    rows = h.cosines[:, iu[0], iu[1]].T                     # (pairs, T)
    im = ax.imshow(rows, aspect="auto", cmap="RdBu", vmin=-1.0, vmax=1.0, interpolation="nearest",
                   extent=(x[0] - 0.5, x[-1] + 0.5, len(rows) - 0.5, -0.5))
    labels = [f"{names[a]}·{names[b]}" for a, b in zip(*iu)]
    if len(labels) <= 24:
      ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(im, ax=ax, label="cos(g_i, g_j)")
  ax.set_title("pairwise task-gradient cosines (blue: aligned, red: conflicting)")
  ax.set_xlabel("step")

  ax = axes[1, 1]
  angles = np.degrees(np.arccos(np.clip(h.update_cosines, -1.0, 1.0)))
  for i, n in enumerate(names):
    lines(ax, angles[:, i], colors(i % 10), f"to {n}")
  lines(ax, np.degrees(np.arccos(np.clip(h.update_cosine_to_mean, -1.0, 1.0))), "k",
        "to mean g0", ls="--")
  ax.axhline(90.0, color="grey", lw=0.8, ls=":")
  ax.set_ylim(0, 180)
  ax.set_title("update-to-task angles (> 90°: that task gets worse)")
  ax.set_ylabel("degrees")
  ax.set_xlabel("step")
  ax.legend(fontsize=8, ncol=2)

  ax = axes[2, 0]
  for i, n in enumerate(names):
    lines(ax, h.grad_norms[:, i], colors(i % 10), f"‖g_{n}‖")
  if np.all(h.grad_norms > 0):
    ax.set_yscale("log")
  ax.set_xlabel("step")
  ax.set_title("task-gradient norms; magnitude similarity (right axis)")
  ax.legend(fontsize=8, ncol=2, loc="lower right", framealpha=0.9)
  if len(iu[0]):
    ax2 = ax.twinx()
    lines(ax2, h.magnitude_similarity[:, iu[0], iu[1]].mean(axis=1), "k", None, ls="--")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("mean magnitude similarity")

  ax = axes[2, 1]
  ax.plot(x, running_mean(h.conflict_fraction, max(window, 1)), color="tab:red", lw=1.4)
  ax.set_ylim(-0.02, 1.02)
  ax.set_ylabel("fraction of conflicting pairs", color="tab:red")
  ax.set_xlabel("step")
  ax.set_title(f"conflicting pairs (running mean of {window} steps) and cond(G)" if window > 1
               else "conflicting pairs (per step) and cond(G)")
  ax2 = ax.twinx()
  lines(ax2, h.condition_number, "tab:blue", None)
  ax2.set_yscale("log")
  ax2.set_ylabel("cond(G)", color="tab:blue")

  if title:
    fig.suptitle(title)
  if path is not None:
    fig.savefig(path, dpi=dpi)
  return fig
