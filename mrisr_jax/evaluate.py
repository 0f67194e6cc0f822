"""Score trained (or imported) generator weights against bicubic on held-out scans.

  python -m mrisr_jax.evaluate --config configs/casrgan_x4.py --weights WORKDIR|FILE.safetensors|FILE.pth
      --input PATH [PATH ...] [--scale S] [--json OUT.json] [--report DIR]
      [--baselines WEIGHTS[@CONFIG] ...] [--tile N] [--overlap N] [--batch N] [--overwrite]

Each input is the high-resolution truth: a fastMRI `.h5` (its target, as training reads it), a
NIfTI `.nii`/`.nii.gz` (reoriented to RAS, sliced along `config.data.slice_axis`, percentile
normalised, empty slices skipped: the data layer's NiftiSliceSource), a `.npy` (2-D slice or
(S, H, W) stack; divided by its maximum when that is above 1), an image (`.png`, `.tif`, ...; one
slice), or a directory of such files. Every input file is one volume.

Protocol (the one training validation uses): each HR slice is centre-cropped to a multiple of the
degradation's LR factors; the LR is the config's `data.degradation` of it, seeded per (config.seed,
volume, slice); the model's input is edge-padded to its size multiple and the output cropped back
(mrisr_jax.predictor, as validation and `infer` run models). Bicubic (a = -0.75) of the same LR is
the reference. Scores follow fastMRI: per volume, PSNR and NMSE over the whole volume and SSIM
averaged over slices, with data range = the volume's maximum; per slice, the same three with the
same data range. `psnr_gain` is the model's PSNR minus bicubic's. Means are over volumes.
"""

from __future__ import annotations

import pathlib
import time

from absl import flags
import numpy as np

from mrisr_jax import cli
from mrisr_jax.data.errors import OneLineError
from mrisr_jax.data.splits import IMAGE_SUFFIXES, file_format
from mrisr_jax.spec import resolve


def define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so the module imports anywhere."""
  flags.DEFINE_string(
    'config',
    None,
    'Config file, optionally FILE:ARGS; its data.degradation makes the LR '
    'inputs and its data fields read the scans; --config.KEY=VALUE overrides a field.',
  )
  flags.DEFINE_string(
    'weights',
    None,
    'Training workdir (its best checkpoint, see --step; its EMA when the config keeps one) '
    'or a .pth/.safetensors state_dict.',
  )
  flags.DEFINE_string(
    'step',
    None,
    'With a workdir --weights: best (the step with the best validation PSNR; the latest when no step '
    'was validated), latest, or a saved step number (default: best). Baselines take their best step.',
  )
  flags.DEFINE_multi_string(
    'input',
    None,
    'High-resolution scan(s): .h5 (fastMRI), .nii/.nii.gz, .npy, '
    '.png/.tif/..., or a directory of them. Repeat the flag or separate paths with '
    'commas.',
  )
  flags.DEFINE_integer(
    'scale', None, "Expected upscaling factor; stops if the config's differs (default: the config's)."
  )
  flags.DEFINE_string('json', None, 'Write the machine-readable summary here (.json).')
  flags.DEFINE_string(
    'report',
    None,
    'Write a report folder here: one PNG figure per volume (LR | '
    'bicubic | SR | HR | error, zoomed region), report.md, report.html, metrics.json.',
  )
  flags.DEFINE_multi_string(
    'baselines',
    [],
    'Other weights to score on the same LR inputs: WEIGHTS (same config) or WEIGHTS@CONFIG[:ARG]; repeatable.',
  )
  flags.DEFINE_integer('tile', 0, 'LR tile side for slices larger than this (0: whole slices).')
  flags.DEFINE_integer('overlap', 16, 'LR pixels of context each tile side discards.')
  flags.DEFINE_integer('batch', 0, 'Slices (or tiles) per forward pass (0: as infer picks it, by size).')
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --json file or a non-empty --report folder.')
  flags.DEFINE_bool('progress', True, 'Show a progress bar over the volumes.')
  flags.mark_flags_as_required(['config', 'weights', 'input'])


class EvaluateError(OneLineError):
  """One line naming the input, option or output at fault."""


# ------------------------------------------------------------------------------------------ inputs


def expand_inputs(paths) -> list[pathlib.Path]:
  """Files, in the order given; a directory contributes its supported files, sorted."""
  out = []
  for raw in paths:
    for part in str(raw).split(','):
      if not part:
        continue
      p = pathlib.Path(part)
      if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith('.') and file_format(f))
        if not files:
          raise EvaluateError(f'{p}: no .h5, .nii, .nii.gz, .npy or image files in the directory')
        out += files
      elif not p.exists():
        raise EvaluateError(f'{p}: no such input file or directory')
      elif file_format(p) is None:
        raise EvaluateError(
          f'{p}: unknown input suffix; use .h5, .nii, .nii.gz, .npy, {", ".join(IMAGE_SUFFIXES)} or a directory'
        )
      else:
        out.append(p)
  if not out:
    raise EvaluateError('--input: no input given')
  seen = {}
  for p in out:
    if p.resolve() in seen:
      raise EvaluateError(f'{p}: given twice (also as {seen[p.resolve()]})')
    seen[p.resolve()] = p
  return out


def read_truth(path: pathlib.Path, data_cfg) -> dict:
  """{'name', 'path', 'hr' float32 (S, H, W) in [0, 1], 'slices' (indices in the file), 'notes'}."""
  from mrisr_jax.data import splits
  from mrisr_jax.data.errors import DataError

  kind = file_format(path)
  notes = []
  if kind in ('fastmri', 'nifti'):
    try:
      source = splits.build_source(kind, path.parent, [path], data_cfg, None, None)
    except DataError as e:
      raise EvaluateError(str(e)) from None
    try:
      vol = source.volumes[0]
      hr = source.read_volume(0)
      slices = list(vol.metadata.get('slice_index', range(vol.num_slices)))
      name = vol.name
    finally:
      source.close()
  elif kind == 'npy':
    from mrisr_jax import fileio

    try:  # a 2-D slice or (S, H, W) stack, finite, real
      hr, _ = fileio.read_stack(path, 'npy')
    except fileio.FileError as e:
      raise EvaluateError(str(e)) from None
    if hr.min() < 0:
      raise EvaluateError(f'{path}: has negative values (min {hr.min():g}); expected magnitudes')
    if not hr.max() > 0:
      raise EvaluateError(f'{path}: is all zero')
    if hr.max() > 1:
      notes.append(f'{path.name}: divided by its maximum {hr.max():g} to reach [0, 1]')
      hr = hr / hr.max()
    slices, name = list(range(hr.shape[0])), path.stem
  else:
    from mrisr_jax import fileio

    try:  # a colour image is converted with a warning naming it (as infer reads it)
      hr, _ = fileio.read_stack(path, 'png')
    except (DataError, fileio.FileError) as e:
      raise EvaluateError(str(e)) from None
    slices, name = [0], path.stem
  return {'name': name, 'path': str(path), 'hr': np.asarray(hr, np.float32), 'slices': slices, 'notes': notes}


# ------------------------------------------------------------------------------------------ scoring


def slice_metrics(hr: np.ndarray, pred: np.ndarray) -> list[dict]:
  """Per-slice PSNR/SSIM/NMSE with the volume's data range (its maximum), as fastMRI scores volumes."""
  from mrisr_jax import metrics

  r = float(hr.max())
  return [
    {'psnr': metrics.psnr(g, p, r), 'ssim': metrics.ssim(g, p, r), 'nmse': metrics.nmse(g, p)} for g, p in zip(hr, pred)
  ]


def _zoom_region(err: np.ndarray) -> tuple[int, int, int, int]:
  """(y, x, h, w): the quarter-size window where the bicubic error is largest (where SR matters)."""
  H, W = err.shape
  h, w = max(1, H // 4), max(1, W // 4)
  c = np.pad(np.cumsum(np.cumsum(err, 0), 1), ((1, 0), (1, 0)))
  sums = c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]
  y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
  return int(y), int(x), h, w


class Method:
  """A generator to score: weights under a config, run by a mrisr_jax.predictor.Predictor."""

  def __init__(self, label: str, config, weights, tile: int, overlap: int, batch: int, *, step=None, log=None):
    from mrisr_jax import network_variables, registry
    from mrisr_jax.predictor import Predictor

    self.label, self.config, self.weights = label, config, str(weights)
    self.model = registry.build_generator(config.model)
    variables, chosen = network_variables.load_generator(config, weights, self.model, step=step, log=log)
    self.step, self.step_reason = (chosen['step'], chosen['reason']) if chosen else (None, None)
    self.predictor = Predictor(self.model, variables, tile=tile, overlap=overlap, batch=batch)

  def super_resolve(self, lr: np.ndarray, bicubic: np.ndarray, factors) -> np.ndarray:
    return self.predictor(lr, factors=factors, bicubic=bicubic)


def _baseline(spec: str, config, index: int, tile, overlap, batch, log=None) -> Method:
  from mrisr_jax import config_base

  weights, _, config_spec = spec.partition('@')
  base_config = resolve(config_base.load_config(config_spec)) if config_spec else config
  if base_config.model.scale != config.model.scale:
    raise EvaluateError(
      f'--baselines {spec}: scale {base_config.model.scale} does not match the '
      f"evaluated config's scale {config.model.scale}"
    )
  label = pathlib.Path(weights.rstrip('/')).name or f'baseline{index}'
  if config_spec:
    label = f'{base_config.name}:{label}'
  return Method(label, base_config, weights, tile, overlap, batch, log=log)


def evaluate_volume(truth: dict, methods: list[Method], config) -> dict:
  """Scores of one volume for bicubic and every method, with the arrays a figure needs."""
  from mrisr_jax import metrics, report
  from mrisr_jax.data import degrade, pipeline

  config = resolve(config)
  steps = config.data.degradation
  scale = config.model.scale
  factors = degrade.lr_factors(steps, scale)
  hr0 = truth['hr']
  if min(hr0.shape[1] // factors[0] * factors[0], hr0.shape[2] // factors[1] * factors[1]) < 7:
    raise EvaluateError(
      f'{truth["path"]}: slices {hr0.shape[1:]} are too small to score at x{scale} '
      '(SSIM needs at least 7x7 pixels after cropping to the scale)'
    )
  hr, lr = pipeline.degrade_volume(hr0, truth['name'], truth['slices'], scale, steps, config.seed)
  bicubic = np.clip(degrade.bicubic_resize(lr, *hr.shape[-2:]), 0.0, 1.0).astype(np.float32)
  preds = {'bicubic': bicubic}
  if factors[0] != factors[1]:  # through-plane: cubic B-spline, the thick-slice literature's baseline
    preds['spline'] = np.clip(degrade.spline_resize(lr, *hr.shape[-2:]), 0.0, 1.0)
  for m in methods:
    preds[m.label] = m.super_resolve(lr, bicubic, factors)
  row = {
    'volume': truth['name'],
    'path': truth['path'],
    'slices': len(truth['slices']),
    'hr_shape': list(hr.shape[1:]),
    'lr_shape': list(lr.shape[1:]),
  }
  if hr.shape != hr0.shape:
    row['cropped_from'] = list(hr0.shape[1:])
  per_slice = {label: slice_metrics(hr, p) for label, p in preds.items()}
  for label, p in preds.items():
    row[label] = metrics.volume_metrics(hr, p)
  row['psnr_gain'] = row['model']['psnr'] - row['bicubic']['psnr']
  row['per_slice'] = [
    {'slice': int(s), **{label: per_slice[label][k] for label in preds}} for k, s in enumerate(truth['slices'])
  ]
  k = hr.shape[0] // 2
  arrays = {'lr': lr[k], 'bicubic': bicubic[k], 'sr': preds['model'][k], 'hr': hr[k], 'slice': truth['slices'][k]}
  arrays['orientation'] = report.slice_orientation(file_format(truth['path']))  # NIfTI: RAS slices
  return {'row': row, 'arrays': arrays}


def summarise(rows: list[dict], labels: list[str]) -> dict:
  from mrisr_jax import metrics

  mean = {label: metrics.mean_metrics([r[label] for r in rows]) for label in labels}
  mean['psnr_gain'] = float(np.mean([r['psnr_gain'] for r in rows]))
  return mean


def console_table(rows: list[dict], mean: dict, labels: list[str]) -> str:
  """PSNR / SSIM per volume and method, gain over bicubic, and the mean row."""
  head = ['volume', 'slices'] + [f'{m} PSNR' for m in labels] + [f'{m} SSIM' for m in labels] + ['gain dB']
  lines = []
  for r in rows:
    lines.append(
      [r['volume'], str(r['slices'])]
      + [f'{r[m]["psnr"]:.2f}' for m in labels]
      + [f'{r[m]["ssim"]:.4f}' for m in labels]
      + [f'{r["psnr_gain"]:+.2f}']
    )
  lines.append(
    [f'mean ({len(rows)})', str(sum(r['slices'] for r in rows))]
    + [f'{mean[m]["psnr"]:.2f}' for m in labels]
    + [f'{mean[m]["ssim"]:.4f}' for m in labels]
    + [f'{mean["psnr_gain"]:+.2f}']
  )
  widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(head)]
  fmt = lambda cells: '  '.join(
    c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
    for i, (c, w) in enumerate(zip(cells, widths))
  )
  sep = '  '.join('-' * w for w in widths)
  return '\n'.join([fmt(head), sep] + [fmt(line) for line in lines[:-1]] + [sep, fmt(lines[-1])])


# ------------------------------------------------------------------------------------------ outputs


def _check_outputs(inputs, json_path, report_dir, overwrite: bool) -> None:
  resolved = {p.resolve() for p in inputs}
  if json_path is not None:
    if json_path.resolve() in resolved:
      raise EvaluateError(f'{json_path}: is an input file; choose another --json path')
    if json_path.exists() and not overwrite:
      raise EvaluateError(f'{json_path}: exists; pass --overwrite to replace it')
  if report_dir is not None:
    if report_dir.exists() and not report_dir.is_dir():
      raise EvaluateError(f'{report_dir}: exists and is not a directory')
    if any(report_dir.resolve() in p.parents for p in resolved):
      raise EvaluateError(f'{report_dir}: holds input files; choose another --report folder')
    if report_dir.is_dir() and any(report_dir.iterdir()) and not overwrite:
      raise EvaluateError(f'{report_dir}: is not empty; pass --overwrite to replace its report')


def _write_json(path: pathlib.Path, payload: dict) -> None:
  from mrisr_jax import fileio
  from mrisr_jax.report import to_jsonable

  fileio.write_json(path, to_jsonable(payload))


def write_report(report_dir: pathlib.Path, result: dict, figures: list[dict], title: str, notes: list[str]) -> dict:
  """One figure per volume, then report.md / report.html / metrics.json (mrisr_jax.report)."""
  from mrisr_jax import report

  report_dir.mkdir(parents=True, exist_ok=True)
  images = []
  for i, (row, a) in enumerate(zip(result['volumes'], figures)):
    zoom = _zoom_region(np.abs(a['bicubic'] - a['hr']))
    grid = report.image_grid(
      a['lr'], a['bicubic'], a['sr'], a['hr'], zoom=zoom, orientation=a.get('orientation', 'stored')
    )
    name = f'{i:03d}_{"".join(c if c.isalnum() or c in "-_." else "_" for c in row["volume"])}.png'
    report.save_png(report_dir / name, grid)
    images.append(name)
  labels = result['methods']
  per_volume = [{'volume': r['volume'], **{m: r[m] for m in labels}} for r in result['volumes']]
  summary = {m: result['mean'][m] for m in labels}
  return report.write_report(
    report_dir, title=title, summary=summary, per_volume=per_volume, images=images, notes=notes
  )


# ------------------------------------------------------------------------------------------ driver


def evaluate(
  config,
  weights,
  inputs,
  *,
  step=None,
  scale: int | None = None,
  json_path=None,
  report_dir=None,
  baselines=(),
  tile: int = 0,
  overlap: int = 16,
  batch: int = 0,
  overwrite: bool = False,
  progress: bool = False,
  log=print,
) -> dict:
  """Scores `weights` (and bicubic, and `baselines`) on `inputs`; returns the JSON summary.

  step: a workdir's checkpoint (network_variables.resolve_step; default: the best by validation
  PSNR, else the latest); the summary records the step used (`step`, `step_reason`).
  """
  from tqdm import tqdm

  config = resolve(config)  # checked once; below only the RunSpec

  if scale is not None and int(scale) != int(config.model.scale):
    raise EvaluateError(
      f"--scale {scale} does not match the config's model.scale {config.model.scale}; "
      'pick the config for that scale (e.g. configs/casrgan_x2.py)'
    )
  files = expand_inputs(inputs)
  json_path = pathlib.Path(json_path) if json_path else None
  report_dir = pathlib.Path(report_dir) if report_dir else None
  _check_outputs(files, json_path, report_dir, overwrite)
  steps = config.data.degradation
  methods = [Method('model', config, weights, tile, overlap, batch, step=step, log=log)]
  methods += [_baseline(spec, config, i, tile, overlap, batch, log) for i, spec in enumerate(baselines)]
  from mrisr_jax.data import degrade

  through_plane = len(set(degrade.lr_factors(steps, config.model.scale))) > 1
  labels = ['model', 'bicubic'] + (['spline'] if through_plane else []) + [m.label for m in methods[1:]]
  if len(set(labels)) != len(labels):
    raise EvaluateError(
      f'--baselines: labels {labels[2:]} must differ from each other and from '
      '"model"/"bicubic"; give distinct weights names'
    )
  rows, figures, notes = [], [], []
  start = time.perf_counter()
  for path in tqdm(files, desc='evaluate', unit='volume', disable=not progress, leave=False):
    truth = read_truth(path, config.data)
    notes += truth['notes']
    out = evaluate_volume(truth, methods, config)
    rows.append(out['row'])
    figures.append(out['arrays'])
    if 'cropped_from' in out['row']:
      notes.append(
        f'{truth["name"]}: HR slices centre-cropped from {tuple(out["row"]["cropped_from"])} '
        f'to {tuple(out["row"]["hr_shape"])} (a multiple of the LR factors)'
      )
  result = {
    'config': config.name,
    'model': config.model.name,
    'weights': str(weights),
    'step': methods[0].step,
    'step_reason': methods[0].step_reason,
    'scale': int(config.model.scale),
    'degradation': list(steps),
    'seed': int(config.seed),
    'methods': labels,
    'baselines': {m.label: m.weights for m in methods[1:]},
    'baseline_steps': {m.label: m.step for m in methods[1:]},
    'volumes': rows,
    'mean': summarise(rows, labels),
    'seconds': time.perf_counter() - start,
    'notes': notes,
  }
  log(console_table(rows, result['mean'], labels))
  if json_path is not None:
    _write_json(json_path, result)
    log(f'wrote {json_path}')
  if report_dir is not None:
    title = f'{config.name}: {config.model.name} x{config.model.scale} against bicubic on {len(rows)} volume(s)'
    report_notes = [
      f'weights: {weights}'
      + (f' step {result["step"]} ({result["step_reason"]})' if result['step'] is not None else ''),
      f'degradation: {", ".join(steps)} (seed {config.seed})',
      'PSNR/SSIM/NMSE per volume, data range = the volume maximum (fastMRI); '
      'figures show the middle slice with the region where bicubic errs most enlarged',
    ] + notes
    paths = write_report(report_dir, result, figures, title, report_notes)
    log(f'wrote {paths["html"]}')
    if pathlib.Path(weights).is_dir():  # a training workdir lists its evaluations on its front page
      from mrisr_jax.report import link_report

      try:
        log(f'linked from {link_report(weights, title, paths["html"])}')
      except OSError as e:
        log(f'(not linked from {weights}: {e})')
  return result


def main(config):
  f = flags.FLAGS
  evaluate(
    config,
    f.weights,
    f.input,
    step=f.step,
    scale=f.scale,
    json_path=f.json,
    report_dir=f.report,
    baselines=f.baselines,
    tile=f.tile,
    overlap=f.overlap,
    batch=f.batch,
    overwrite=f.overwrite,
    progress=f.progress,
  )


def run():  # python -m mrisr_jax.evaluate, mrisr-evaluate; a missing optional package (torch) is a user error too
  from mrisr_jax import fileio

  define_flags()
  with fileio.exit_on_signals():  # Ctrl-C / SIGTERM: temporaries removed, one line, exit 130 / 143
    cli.run(main, user_errors=(ImportError,))


if __name__ == '__main__':
  run()
