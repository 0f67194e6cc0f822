"""PyTorch train steps and forward passes that compute what the PyTorch reference computes, for the
speed comparison in tools/benchmark.py (it imports this module); alone it times one config's torch step:

  python tools/torch_baselines.py --config configs/edsr.py:baseline --batch 4 --lr_size 48 --steps 3

Networks: the torch mirrors of `mrisr_jax.interop.torch_models` with the fields of the flax modules the
stage trains (`recipe.stage_generator`: the stage's DeepNorm alpha and dropout); CASR's mirror computes
the reference's dense all-ones AHPF convolution, with `reference_compat` as the config has it. Losses:
the stage's `recipe.loss_spec`, written as the reference writes them: pixel (l1 | mse | charbonnier),
VGG features of the grey image repeated to 3 channels (a torch `features[:k]` stack built from
`models.vgg.vgg_layers`, random weights, frozen; HR features without gradients), and for a 'gan' stage
one G step (D scores SR) then one D step on SR.detach() and HR. The CASRGAN recipe (`bce_sum`) is the
reference's: sum_batch(-log D(SR)) on D's sigmoid output, BCE for D, and its L1 on the 3-channel
images. Separate Adam optimizers (the stage's lr, betas, eps 1e-8; `lr_multipliers` as parameter
groups). Not modelled, as they cost nothing measurable: learning-rate schedules (the lr stays the
stage's initial one), the JAX step's finite-loss check and metrics. Everything is NCHW float32.
"""

from __future__ import annotations

import argparse
import inspect
import os
import pathlib
import statistics
import sys
import time
from typing import Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))


def torch_threads() -> int:
  """os.cpu_count(), or fewer when this process may use fewer cores (a CPU affinity mask)."""
  n = os.cpu_count() or 1
  try:
    n = min(n, len(os.sched_getaffinity(0)))
  except AttributeError:  # not Linux
    pass
  return n


def mirror(flax_module, name: str, **extra):
  """The torch mirror of registry model `name` with the field values of `flax_module` (as
  torch_models.build_torch_generator, but from a module the caller built, e.g. with stage overrides);
  `extra` gives mirror arguments the flax module lacks."""
  from mrisr_jax import registry

  cls = registry.torch_mirror_class(name)
  names = [p for p in inspect.signature(cls.__init__).parameters if p != 'self' and hasattr(flax_module, p)]
  return cls(**{n: getattr(flax_module, n) for n in names}, **extra)


def vgg_features(arch: str, taps: tuple[int, ...], normalize_input: bool = False):
  """torchvision `vgg{16,19}().features[:max(taps) + 1]` (3x3 convs pad 1, in-place ReLUs, 2x2 max-pools)
  as an nn.Module returning the activations at `taps`, with random weights, frozen."""
  import torch
  from torch import nn

  from mrisr_jax.models.vgg import IMAGENET_MEAN, IMAGENET_STD, vgg_layers

  last = max(taps)
  layers = []
  for i, layer in enumerate(vgg_layers(arch)[: last + 1]):
    if layer[0] == 'conv':
      layers.append(nn.Conv2d(layer[1], layer[2], 3, padding=1))
    elif layer[0] == 'relu':
      layers.append(
        nn.ReLU(inplace=(i - 1) not in taps)
      )  # torchvision's in-place ReLU, unless it would overwrite a tap
    else:
      layers.append(nn.MaxPool2d(2, 2))

  class Features(nn.Module):
    def __init__(self):
      super().__init__()
      self.features = nn.Sequential(*layers)
      self.taps = tuple(taps)
      self.normalize_input = normalize_input
      self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
      self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x):
      if self.normalize_input:
        x = (x - self.mean) / self.std
      out = {}
      for i, layer in enumerate(self.features):
        x = layer(x)
        if i in self.taps:
          out[i] = x
      return tuple(out[t] for t in self.taps)

  return Features().eval().requires_grad_(False)


def _pixel(name: str) -> Callable:
  import torch
  from torch.nn import functional as F

  if name == 'l1':
    return F.l1_loss
  if name == 'mse':
    return F.mse_loss
  if name == 'charbonnier':
    return lambda x, y, eps=1e-3: torch.mean(torch.sqrt(torch.square(x - y) + eps * eps))
  raise NotImplementedError(f'pixel loss {name!r} has no torch baseline')


def _gram(f):
  b, c, h, w = f.shape
  f = f.reshape(b, c, h * w)
  return f @ f.transpose(1, 2) / (h * w * c)


def _gan_losses(name: str, probabilities: bool):
  """(g(real, fake) -> scalar, d(real, fake) -> scalar, g_needs_real) on D's outputs: sigmoid
  probabilities for the CASRGAN reference's D (`probabilities`), logits otherwise."""
  import torch
  from torch.nn import functional as F

  sp = F.softplus
  if name == 'bce_sum' and probabilities:  # the reference: BCELoss on sigmoid outputs, -log D summed over the batch
    return (
      lambda r, f: -torch.log(f).sum(),
      lambda r, f: F.binary_cross_entropy(f, torch.zeros_like(f)) + F.binary_cross_entropy(r, torch.ones_like(r)),
      False,
    )
  if probabilities:
    raise NotImplementedError(f'GAN loss {name!r} with the CASRGAN discriminator has no torch baseline')
  table = {
    'bce_sum': (lambda r, f: sp(-f).sum(), lambda r, f: sp(-r).mean() + sp(f).mean(), False),
    'nonsaturating': (lambda r, f: sp(-f).mean(), lambda r, f: sp(-r).mean() + sp(f).mean(), False),
    'minimax': (lambda r, f: -sp(f).mean(), lambda r, f: sp(-r).mean() + sp(f).mean(), False),
    'lsgan': (
      lambda r, f: 0.5 * torch.square(f - 1).mean(),
      lambda r, f: 0.5 * torch.square(r - 1).mean() + 0.5 * torch.square(f).mean(),
      False,
    ),
    'hinge': (lambda r, f: -f.mean(), lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean(), False),
  }
  if name not in table:
    raise NotImplementedError(f'GAN loss {name!r} has no torch baseline')
  return table[name]


def _cat3(x):
  return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x


class TrainStep:
  """One training step of `stage` (a recipe.Stage of the resolved `run`) on fixed random data:
  `step()` runs it; `lr`, `hr` are the (batch, 1, H, W) inputs. compile: torch.compile the networks
  (G, D, VGG; the optimizer steps stay eager)."""

  def __init__(self, run, stage, batch: int, *, compile: bool = False, seed: int = 0):
    import torch

    from mrisr_jax import recipe, registry, spec

    run = spec.resolve(run)
    torch.manual_seed(seed)
    self.kind, s = stage.spec.kind, stage.spec
    self.loss = recipe.loss_spec(run, stage)
    g_flax = recipe.stage_generator(run, stage)
    self.g = mirror(g_flax, run.model.name).train()
    hr_h, hr_w = run.data.hr_patch_size
    in_h, in_w = registry.input_size(g_flax, run.lr_patch_shape)
    gen = torch.Generator().manual_seed(seed)
    self.lr = torch.rand(batch, getattr(g_flax, 'in_channels', 1), in_h, in_w, generator=gen)
    self.hr = torch.rand(batch, getattr(g_flax, 'out_channels', 1), hr_h, hr_w, generator=gen)
    groups = self._param_groups(self.g, dict(run.lr_multipliers), s.lr_g * stage.lr_scale)
    self.opt_g = torch.optim.Adam(groups, betas=(s.b1, s.b2), eps=1e-8)
    self.vgg = None
    if self.loss.uses_vgg:
      from mrisr_jax.models.vgg import vgg_layer_index

      loss_cfg = run.loss
      names = [n for n, _ in loss_cfg.perceptual_layers] + [n for n, _ in loss_cfg.style_layers]
      self.taps = tuple(vgg_layer_index(loss_cfg.vgg_arch, n) for n in names)
      self.vgg = vgg_features(loss_cfg.vgg_arch, self.taps, bool(loss_cfg.vgg_imagenet_norm))
    self.d = None
    if self.kind == 'gan':
      d_flax = registry.build_discriminator(run)
      extra = {'image_size': (hr_h, hr_w)} if run.discriminator.name == 'srdcgan_d' else {}
      self.d = mirror(d_flax, run.discriminator.name, **extra).train()
      self.d_probabilities = run.discriminator.name == 'casrgan_d'  # the reference's D ends in a sigmoid
      self.gan_g, self.gan_d, self.g_needs_real = _gan_losses(self.loss.gan, self.d_probabilities)
      # the CASRGAN recipe: the reference takes its L1 on the 3-channel images too
      self.pixel_on_rgb = self.loss.gan == 'bce_sum'
      self.opt_d = torch.optim.Adam(self.d.parameters(), lr=s.lr_d * stage.lr_scale, betas=(s.b1, s.b2), eps=1e-8)
    else:
      self.pixel_on_rgb = False
    self.pixel = _pixel(self.loss.pixel)
    self.g_call, self.d_call, self.vgg_call = self.g, self.d, self.vgg
    if compile:
      self.g_call = torch.compile(self.g)
      self.d_call = torch.compile(self.d) if self.d is not None else None
      self.vgg_call = torch.compile(self.vgg) if self.vgg is not None else None

  @staticmethod
  def _param_groups(module, multipliers: dict, lr: float) -> list[dict]:
    """One Adam group per lr multiplier (keyed by the top-level module name, as the flax params)."""
    groups: dict[float, list] = {}
    for name, p in module.named_parameters():
      groups.setdefault(float(multipliers.get(name.split('.')[0], 1.0)), []).append(p)
    return [{'params': ps, 'lr': lr * f} for f, ps in groups.items()]

  def _d_out(self, x):
    return self.d_call(x) if self.d_probabilities else self.d_call(x).reshape(-1)

  def _content(self, sr, hr, hr_feats):
    spec = self.loss
    loss = 0.0
    if spec.pixel_weight:
      loss = spec.pixel_weight * (self.pixel(_cat3(sr), _cat3(hr)) if self.pixel_on_rgb else self.pixel(sr, hr))
    if self.vgg is not None:
      from torch.nn import functional as F

      crit = F.mse_loss if spec.perceptual_criterion == 'mse' else F.l1_loss
      feats = self.vgg_call(_cat3(sr))
      n_p = len(spec.perceptual_layer_weights)
      if spec.perceptual_weight:
        p = sum(w * crit(a, b) for a, b, w in zip(feats[:n_p], hr_feats[:n_p], spec.perceptual_layer_weights))
        loss = loss + spec.perceptual_weight * p
      if spec.style_weight:
        st = sum(
          w * F.mse_loss(_gram(a), _gram(b)) for a, b, w in zip(feats[n_p:], hr_feats[n_p:], spec.style_layer_weights)
        )
        loss = loss + spec.style_weight * st
    return loss

  def step(self) -> float:
    """One step; returns the G loss (a float: the step has finished)."""
    import torch

    lr, hr = self.lr, self.hr
    hr_feats = None
    if self.vgg is not None:
      with torch.no_grad():
        hr_feats = self.vgg_call(_cat3(hr))
    self.opt_g.zero_grad(set_to_none=True)
    sr = self.g_call(lr)
    loss_g = self._content(sr, hr, hr_feats)
    if self.kind == 'gan':
      real = None
      if self.g_needs_real:
        with torch.no_grad():
          real = self._d_out(hr)
      loss_g = loss_g + self.loss.adversarial_weight * self.gan_g(real, self._d_out(sr))
    loss_g.backward()
    self.opt_g.step()
    if self.kind == 'gan':
      self.opt_d.zero_grad(set_to_none=True)
      fake = self._d_out(sr.detach())
      real = self._d_out(hr)
      loss_d = self.gan_d(real, fake)
      loss_d.backward()
      self.opt_d.step()
    return float(loss_g.detach())


def predict_fn(model_cfg, *, compile: bool = False) -> Callable[[np.ndarray], np.ndarray]:
  """x (B, H, W, 1) numpy -> SR (B, H*f, W*f, 1) numpy: the eval-mode torch mirror under no_grad (what
  `tiling.super_resolve` calls, as `Predictor.forward` for the flax model)."""
  import torch

  from mrisr_jax.interop.torch_models import build_torch_generator

  g = build_torch_generator(model_cfg).eval()
  call = torch.compile(g) if compile else g

  def fn(x):
    with torch.no_grad():
      t = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))
      return call(t).numpy().transpose(0, 2, 3, 1)

  return fn


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config', default='configs/edsr.py:baseline', help='FILE[:ARGS] (configs/...)')
  parser.add_argument('--stage', default='', help='stage name (default: the first stage)')
  parser.add_argument('--batch', type=int, default=4, help='batch of LR/HR crops')
  parser.add_argument('--lr_size', type=int, default=0, help="LR crop side (0: the config's HR crop / scale)")
  parser.add_argument('--steps', type=int, default=3, help='timed steps after one warm-up step')
  parser.add_argument('--compile', action='store_true', help='torch.compile the networks')
  a = parser.parse_args()
  import torch

  from mrisr_jax import config_base, recipe, spec

  torch.set_num_threads(torch_threads())
  config = config_base.load_config(a.config)
  if a.lr_size:
    config.data.hr_patch_size = a.lr_size * config.model.scale
  config.loss.allow_random_vgg = True
  run = spec.resolve(config)
  plan = recipe.stage_plan(run, 1)
  stage = next(s for s in plan if s.name == a.stage) if a.stage else plan[0]
  step = TrainStep(run, stage, a.batch, compile=a.compile)
  t0 = time.perf_counter()
  step.step()
  print(f'first step (warm-up{", compile" if a.compile else ""}): {time.perf_counter() - t0:.2f} s', flush=True)
  times = []
  for _ in range(a.steps):
    t0 = time.perf_counter()
    step.step()
    times.append(time.perf_counter() - t0)
  print(
    f'{a.config} stage {stage.name}, batch {a.batch}, input {tuple(step.lr.shape[2:])}: median step '
    f'{statistics.median(times):.3f} s over {a.steps} ({torch.get_num_threads()} threads, torch {torch.__version__})'
  )


if __name__ == '__main__':
  main()
