"""What every generator shares: the config fields, the class facts the data path reads, the checks.

`registry.build_generator` builds a generator as `Module(**config.model fields)`, so a subclass adds
fields (all with defaults: these come first in the dataclass) and sets the ClassVars it differs in;
the field checks are declared (`choices`, `odd_fields`) and run by `check_fields`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax.numpy as jnp
from flax import linen as nn


class SRGenerator(nn.Module):
  """Base of the generators: `__call__(x, train=False)` maps LR (B, h, w, in) to (B, h*s, w*s, out).

  Attributes:
    scale: the upscaling factor s, one of `supported_scales`.
    in_channels, out_channels: image channels in and out.
    dtype: computation dtype; params stay float32, the output is float32.
  """

  scale: int = 4
  in_channels: int = 1
  out_channels: int = 1
  dtype: Any = jnp.float32
  supported_scales: ClassVar[tuple[int, ...]] = (2, 3, 4)
  # True: the model eats the bicubic-upsampled LR (HR size) and the data path provides it
  upsampled_input: ClassVar[bool] = False
  choices: ClassVar[dict[str, tuple[str, ...]]] = {}  # string fields and the values they take
  odd_fields: ClassVar[tuple[str, ...]] = ()  # kernel sizes: padding k // 2 keeps the size only if odd

  @property
  def size_multiple(self) -> int:
    """The LR input side must be a multiple of this."""
    return 1

  @classmethod
  def scale_error(cls, scale: int) -> str | None:
    """The one-line complaint about an unsupported `scale`, or None if the class supports it."""
    if scale in cls.supported_scales:
      return None
    return f'model.scale={scale!r}: {cls.__name__} supports scales {cls.supported_scales}'

  def check_fields(self) -> None:
    """Raises ValueError (one line, the first problem) on an unsupported scale, a value outside
    `choices` or an even value of an `odd_fields` field; every generator calls it first."""
    name = type(self).__name__
    errors = [self.scale_error(self.scale)]
    errors += [
      f'model.{f}={getattr(self, f)!r}: {name} supports {", ".join(allowed)}'
      for f, allowed in self.choices.items()
      if getattr(self, f) not in allowed
    ]
    errors += [
      f'model.{f}={getattr(self, f)!r}: {name} needs an odd value' for f in self.odd_fields if getattr(self, f) % 2 == 0
    ]
    errors = [e for e in errors if e]
    if errors:
      raise ValueError(errors[0])
