"""A CASRGAN x4 small enough for end-to-end runs in tests: 2 AFEBs, 18 L1 pre-training steps.

`FILE:ARG` takes `gan_epochs=N` (default 0: one compiled step keeps multi-run tests short; the
GAN stage's exact resume is tests/test_train.py's). Every step's losses are logged
(log_every_steps=1) so tests can compare runs step by step from the event files.
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from tests.helpers import tiny_config  # noqa: E402


def get_config(arg=None):
  c = tiny_config()
  c.stages.pretrain.epochs = 2  # 36 sample slices / batch 4 = 9 steps per epoch
  c.stages.finetune.epochs = 0
  c.stages.gan.epochs = 0
  for token in (arg or '').split(','):
    if token.startswith('gan_epochs='):
      c.stages.gan.epochs = int(token.split('=', 1)[1])
  c.log_every_steps = 1
  c.eval_every_steps = c.image_every_steps = c.checkpoint_every_steps = 100
  return c
