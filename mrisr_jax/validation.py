"""Validation on whole slices: the model against bicubic, per volume, as fastMRI scores it.

A slice that does not fit the model is made to fit, never rejected: the HR slice is centre-cropped
to a multiple of the scale (the data layer does this when it supplies the LR: the config's seeded
degradation of the HR, or paired LR files), the LR input is edge-padded at the bottom/right to a
multiple of the model's size multiple, and the SR output is cropped back to the HR size
(`mrisr_jax.predictor`, as `infer` and `evaluate` run models). Models that take the
bicubic-upsampled LR (SRCNN, DRRN) get the bicubic image as input.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from mrisr_jax import metrics, sharding
from mrisr_jax.data import pipeline
from mrisr_jax.data.degrade import bicubic_resize, make_lr
from mrisr_jax.predictor import Geometry, Predictor


def crop_to_multiple(vol: np.ndarray, multiple: int) -> np.ndarray:
  """Centre-crop the last two axes to multiples of `multiple` (the data layer's crop)."""
  return pipeline.crop_to_multiple(vol, (multiple, multiple))


@dataclasses.dataclass
class _Volume:
  name: str
  hr: np.ndarray  # (S, H, W)
  lr: np.ndarray  # (S, H/s, W/s)
  bicubic: np.ndarray  # (S, H, W)
  bicubic_metrics: dict


class Validator:
  """Holds the validation volumes with their LR inputs and bicubic scores, computed once."""

  def __init__(
    self,
    volumes: list[dict],
    scale: int,
    size_multiple: int,
    mesh,
    eval_batch_size: int,
    degradation: tuple = ('area',),
    upsampled_input: bool = False,
    fixed_size: int = 0,
  ):
    self.scale = scale
    self.fixed_size = fixed_size
    self.size_multiple = size_multiple
    self.upsampled_input = upsampled_input
    self.mesh = mesh
    dp = sharding.data_parallel_size(mesh)
    self.batch = max(dp, eval_batch_size - eval_batch_size % dp)
    self.volumes = []
    for v in volumes:
      if 'lr' in v:  # the data layer's LR (paired files, or its seeded degradation)
        hr, lr = np.asarray(v['hr'], np.float32), np.asarray(v['lr'], np.float32)
      else:
        hr = crop_to_multiple(np.asarray(v['hr'], np.float32), scale)
        lr = make_lr(hr, scale, degradation)
      if lr.shape[-2:] == hr.shape[-2:]:  # HR-sized LR files (downsample.py -k) are the bicubic
        if not upsampled_input:
          raise ValueError(
            f'validation volume {v["name"]}: the LR is HR-sized, which only models that '
            'take the upsampled input can use'
          )
        bic = np.clip(lr, 0.0, 1.0)
      else:
        bic = np.clip(bicubic_resize(lr, *hr.shape[-2:]), 0.0, 1.0).astype(np.float32)
      self.volumes.append(_Volume(v['name'], hr, lr, bic, metrics.volume_metrics(hr, bic)))

  def super_resolve(self, predict: Callable, g_vars, lr: np.ndarray, bicubic: np.ndarray | None = None) -> np.ndarray:
    """lr (S, h, w) -> SR (S, h*fy, w*fx) in [0, 1], batched over slices on the mesh.

    Models that take the upsampled LR get `bicubic` (the clipped bicubic of `lr`; computed if not given).
    """
    batch_sharding = sharding.batch_sharding(self.mesh)

    def apply(variables, x):  # the compiled, mesh-sharded predict of training
      return predict(variables, sharding.host_replicated_to_global(x, batch_sharding))

    factors = None
    if bicubic is not None:
      factors = tuple(b // l for b, l in zip(bicubic.shape[-2:], lr.shape[-2:]))
    geometry = Geometry(self.scale, self.size_multiple, self.upsampled_input, self.fixed_size)
    # every batch full: one compiled, sharded shape
    predictor = Predictor(geometry, g_vars, batch=self.batch, fixed_batch=True, apply=apply)
    return predictor(lr, factors=factors, bicubic=bicubic)

  def sample(self, predict: Callable, g_vars) -> tuple:
    """(LR, bicubic, SR, HR) of the middle slice of the first volume, for image grids."""
    v = self.volumes[0]
    k = v.hr.shape[0] // 2
    sr = self.super_resolve(predict, g_vars, v.lr[k : k + 1], v.bicubic[k : k + 1])[0]
    return v.lr[k], v.bicubic[k], sr, v.hr[k]

  def run(self, predict: Callable, g_vars) -> dict:
    """Returns {'summary': {model, bicubic}, 'per_volume': [...], 'sample': (lr, bic, sr, hr)}."""
    per_volume, sample = [], None
    for v in self.volumes:
      sr = self.super_resolve(predict, g_vars, v.lr, v.bicubic)
      per_volume.append({'volume': v.name, 'model': metrics.volume_metrics(v.hr, sr), 'bicubic': v.bicubic_metrics})
      if sample is None:
        k = v.hr.shape[0] // 2
        sample = (v.lr[k], v.bicubic[k], sr[k], v.hr[k])
    summary = {key: metrics.mean_metrics([row[key] for row in per_volume]) for key in ('model', 'bicubic')}
    return {'summary': summary, 'per_volume': per_volume, 'sample': sample}


def log_line(summary: dict) -> str:
  m, b = summary['model'], summary['bicubic']
  return (
    f'val PSNR {m["psnr"]:.3f} dB (bicubic {b["psnr"]:.3f}, gain {m["psnr"] - b["psnr"]:+.3f}) '
    f'SSIM {m["ssim"]:.4f} (bicubic {b["ssim"]:.4f}) NMSE {m["nmse"]:.5f} (bicubic {b["nmse"]:.5f})'
  )
