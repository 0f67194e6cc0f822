#!/usr/bin/env python3
"""Convert torchvision VGG weights (.pth state_dict) to a .npz that mrisr_jax reads without torch.

  python tools/convert_vgg.py --input vgg19-dcbb9e9d.pth --output vgg19.npz [--arch vgg19]

The .npz keeps torchvision's names and layouts (`features.{i}.weight` OIHW float32,
`features.{i}.bias`); `classifier.*` is dropped. Every conv of the chosen arch must be present
with torchvision's shape. Then set `config.loss.vgg_weights=vgg19.npz`
(`mrisr_jax.models.vgg.load_vgg_params` reads .pth and .npz alike).

Needs torch and numpy only (not jax); the weights come from
https://download.pytorch.org/models/vgg19-dcbb9e9d.pth (or vgg16-397923af.pth).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# torchvision `cfgs` ('M' = max-pool); kept here so that this tool runs without jax/mrisr_jax.
# Must agree with mrisr_jax.models.vgg.VGG_CFGS.
VGG_CFGS = {
  'vgg16': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'),
  'vgg19': (64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512, 'M'),
}


class ConvertError(Exception):
  pass


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
  shapes, idx, cin = {}, 0, 3
  for v in VGG_CFGS[arch]:
    if v == 'M':
      idx += 1
    else:
      shapes[f'features.{idx}.weight'] = (v, cin, 3, 3)
      shapes[f'features.{idx}.bias'] = (v,)
      cin, idx = v, idx + 2
  return shapes


def convert(input_path: str, output_path: str, arch: str) -> int:
  """Writes the .npz; returns the number of arrays written. Raises ConvertError."""
  if not os.path.isfile(input_path):
    raise ConvertError(f'input not found: {input_path}')
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ConvertError('this tool needs PyTorch (pip install "mrisr_jax[torch]")') from e
  try:
    sd = torch.load(input_path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e).splitlines()[0] if str(e) else ''
    raise ConvertError(f'could not read {input_path} as a PyTorch state_dict: {type(e).__name__}: {msg}') from e
  if isinstance(sd, dict) and isinstance(sd.get('state_dict'), dict):
    sd = sd['state_dict']
  if not isinstance(sd, dict):
    raise ConvertError(f'{input_path} does not hold a state_dict (got {type(sd).__name__})')
  feats = {}
  for k, v in sd.items():
    k = str(k)
    if k.startswith('module.'):
      k = k[len('module.') :]
    if k.startswith('features.') and hasattr(v, 'detach'):
      feats[k] = v.detach().cpu().float().numpy() if v.is_floating_point() else v.numpy()
  if any(k.endswith('running_mean') for k in feats):
    raise ConvertError(f'{input_path} is a batch-norm VGG (vgg*_bn), not plain {arch}')
  expected = expected_shapes(arch)
  missing = [k for k in expected if k not in feats]
  if missing:
    raise ConvertError(
      f'{input_path} is not a torchvision {arch} state_dict: missing {missing[:4]}{"..." if len(missing) > 4 else ""}'
    )
  unexpected = [k for k in feats if k not in expected]
  bad = [f'{k} {tuple(feats[k].shape)} != {s}' for k, s in expected.items() if tuple(feats[k].shape) != s]
  if bad or unexpected:
    raise ConvertError(f'{input_path} does not match {arch}: wrong shapes {bad[:4]}, unexpected keys {unexpected[:4]}')
  out_dir = os.path.dirname(os.path.abspath(output_path))
  if not os.path.isdir(out_dir):
    raise ConvertError(f'output directory does not exist: {out_dir}')
  arrays = {k: np.ascontiguousarray(feats[k], dtype=np.float32) for k in expected}
  tmp = output_path + '.tmp.npz'
  np.savez(tmp, **arrays)
  os.replace(tmp, output_path)
  return len(arrays)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description='Convert a torchvision VGG16/VGG19 .pth state_dict to a torch-free .npz '
    '(features.{i}.weight/bias, classifier dropped) for mrisr_jax perceptual losses.'
  )
  parser.add_argument('--input', required=True, help='torchvision .pth, e.g. vgg19-dcbb9e9d.pth')
  parser.add_argument('--output', required=True, help='output .npz path, e.g. vgg19.npz')
  parser.add_argument(
    '--arch', default='vgg19', choices=sorted(VGG_CFGS), help='architecture the weights must match (default vgg19)'
  )
  args = parser.parse_args(argv)
  if not args.output.endswith('.npz'):
    print(f'convert_vgg: error: --output must end with .npz, got {args.output}', file=sys.stderr)
    return 2
  try:
    n = convert(args.input, args.output, args.arch)
  except ConvertError as e:
    print(f'convert_vgg: error: {e}', file=sys.stderr)
    return 1
  print(f'wrote {n} arrays ({args.arch} features) to {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
