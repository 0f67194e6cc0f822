"""Training-curve plots from a run's TensorBoard event files.

* :func:`read_scalars` — every scalar summary under a workdir, ``tag -> (steps, values)``.
* :func:`plot_curves` — losses, learning rates and validation PSNR side by side, as a PNG.
* :func:`plot_run` — both, writing ``<workdir>/report/curves.png`` by default.

train.py writes with clu's ``create_default_writer`` (TF2 summary writer): scalars are stored as
0-d float32 tensor summaries (``tensor_content`` bytes, plugin ``scalars``), not ``simple_value``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mrisr_jax.errors import UserError

__all__ = ['RunCurvesError', 'read_scalars', 'plot_curves', 'plot_run']

EVENT_GLOB = 'events.out.tfevents.*'
PSNR_TAGS = (('val/model_psnr', 'model'), ('val/bicubic_psnr', 'bicubic'))

Scalars = dict[str, tuple[np.ndarray, np.ndarray]]


class RunCurvesError(UserError, ValueError):
  """A workdir without usable scalars, or nothing to plot (one-line message)."""


def _event_files(workdir: Path) -> list[Path]:
  return sorted(p for p in workdir.rglob(EVENT_GLOB) if p.is_file())


def _scalar_of(value) -> float | None:
  """The float of a scalar summary value, or None for images, histograms, hparams, text."""
  # Lazy: tensorboard (and the TensorFlow it pulls in when installed) is slow to import.
  from tensorboard.util import tensor_util

  kind = value.WhichOneof('value')
  if kind == 'simple_value':  # TF1-style scalars
    return float(value.simple_value)
  if kind != 'tensor':
    return None
  plugin = value.metadata.plugin_data.plugin_name
  if plugin not in ('scalars', ''):
    return None
  try:
    arr = tensor_util.make_ndarray(value.tensor)
  except (TypeError, ValueError):
    return None
  if arr.size != 1 or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
    return None
  return float(arr.reshape(()))


def read_scalars(workdir: str | os.PathLike) -> Scalars:
  """Every scalar in the event files under ``workdir`` (top level and subfolders).

  Returns ``tag -> (steps int64, values float64)`` sorted by step. A step written more than once
  (a resumed run) keeps the value written last, by event wall time across files.
  """
  root = Path(workdir)
  if not root.exists():
    raise RunCurvesError(f'workdir {str(root)!r} does not exist')
  if not root.is_dir():
    raise RunCurvesError(f'workdir {str(root)!r} is not a directory')
  files = _event_files(root)
  if not files:
    raise RunCurvesError(f'no TensorBoard event files ({EVENT_GLOB}) in workdir {str(root)!r}')
  # Lazy, and only once there is something to read, so the CLI fails fast on an empty dir.
  from tensorboard.backend.event_processing import event_file_loader

  records = []  # (wall_time, tag, step, value) in file order, then record order
  for path in files:
    for event in event_file_loader.EventFileLoader(str(path)).Load():
      if not event.HasField('summary'):
        continue
      for value in event.summary.value:
        x = _scalar_of(value)
        if x is not None:
          records.append((event.wall_time, value.tag, int(event.step), x))
  if not records:
    raise RunCurvesError(f'no scalar summaries in the event files of workdir {str(root)!r}')

  # Stable sort: ties in wall time keep file/record order, so later writes still win.
  records.sort(key=lambda r: r[0])
  by_tag: dict[str, dict[int, float]] = {}
  for _, tag, step, x in records:
    by_tag.setdefault(tag, {})[step] = x
  out: Scalars = {}
  for tag in sorted(by_tag):
    steps = np.array(sorted(by_tag[tag]), dtype=np.int64)
    values = np.array([by_tag[tag][s] for s in steps.tolist()], dtype=np.float64)
    out[tag] = (steps, values)
  return out


def _loss_tags(scalars: Mapping) -> list[str]:
  # Gradient norms live on another scale than the loss terms; they are left out.
  return sorted(t for t in scalars if t.startswith('train/') and not t.startswith('train/lr_') and 'grad' not in t)


def _lr_tags(scalars: Mapping) -> list[str]:
  return sorted(t for t in scalars if t.startswith('train/lr_'))


def _positive_only(values: np.ndarray) -> np.ndarray:
  # A log axis cannot show 0 (e.g. warmup's first lr); NaN leaves a gap instead of a spike.
  return np.where(values > 0, values, np.nan)


def _plot_losses(ax, scalars, tags) -> None:
  finite = np.concatenate([scalars[t][1][np.isfinite(scalars[t][1])] for t in tags])
  log = finite.size > 0 and bool(np.all(finite > 0))
  for tag in tags:
    steps, values = scalars[tag]
    ax.plot(steps, values, label=tag.removeprefix('train/'), marker='.' if steps.size < 20 else None)
  if log:
    ax.set_yscale('log')
  ax.set_title('training losses')
  ax.set_ylabel('loss')


def _plot_lrs(ax, scalars, tags) -> None:
  any_positive = False
  for tag in tags:
    steps, values = scalars[tag]
    any_positive |= bool(np.any(values > 0))
    ax.plot(steps, _positive_only(values), label=tag.removeprefix('train/'), marker='.' if steps.size < 20 else None)
  if any_positive:
    ax.set_yscale('log')
  ax.set_title('learning rates')
  ax.set_ylabel('learning rate')


def _plot_psnr(ax, scalars, tags) -> None:
  for tag, label in PSNR_TAGS:
    if tag in tags:
      steps, values = scalars[tag]
      ax.plot(steps, values, label=label, marker='o', markersize=3, linestyle='--' if label == 'bicubic' else '-')
  ax.set_title('validation PSNR')
  ax.set_ylabel('PSNR (dB)')


def _write_png_atomic(fig, out: Path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from mrisr_jax import fileio

  FigureCanvasAgg(fig)
  # readers (a browser on the run's index) never see a half-written PNG
  fileio.atomic_write(out, lambda tmp: fig.savefig(tmp, format='png'))


def plot_curves(
  scalars: Mapping[str, tuple[np.ndarray, np.ndarray]], out_path: str | os.PathLike, title: str = ''
) -> str:
  """Writes losses | learning rates | validation PSNR vs step as a PNG; returns its path.

  A panel whose tags are absent is left out; with none of them, :class:`RunCurvesError`.
  """
  # Lazy: matplotlib is only needed to draw; Figure + Agg canvas, never pyplot's global state.
  from matplotlib.figure import Figure

  panels = []
  loss_tags, lr_tags = _loss_tags(scalars), _lr_tags(scalars)
  psnr_tags = [t for t, _ in PSNR_TAGS if t in scalars]
  if loss_tags:
    panels.append((_plot_losses, loss_tags))
  if lr_tags:
    panels.append((_plot_lrs, lr_tags))
  if psnr_tags:
    panels.append((_plot_psnr, psnr_tags))
  if not panels:
    raise RunCurvesError(
      'nothing to plot: no train/* loss, train/lr_* or val/*_psnr scalars '
      f'(tags: {", ".join(sorted(scalars)) or "none"})'
    )

  fig = Figure(figsize=(5.0 * len(panels), 4.0), dpi=100, layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  for ax, (draw, tags) in zip(axes, panels):
    draw(ax, scalars, tags)
    ax.set_xlabel('step')
    ax.grid(True, which='major', alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize='small')
  if title:
    fig.suptitle(title)
  out = Path(out_path)
  _write_png_atomic(fig, out)
  return str(out)


def plot_run(workdir: str | os.PathLike, out: str | os.PathLike | None = None) -> str:
  """read_scalars + plot_curves; ``out`` defaults to ``<workdir>/report/curves.png``."""
  scalars = read_scalars(workdir)
  root = Path(workdir)
  out_path = Path(out) if out is not None else root / 'report' / 'curves.png'
  return plot_curves(scalars, out_path, title=root.resolve().name)
