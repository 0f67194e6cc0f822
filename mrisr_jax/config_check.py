"""The config error, and `validate`: a config checked and resolved into its RunSpec (mrisr_jax.spec)."""

from __future__ import annotations


from mrisr_jax.errors import ConfigError  # noqa: F401  (a UserError: one line, exit 2)


def validate(config):
  """The RunSpec of `config` (see mrisr_jax.spec.resolve); the first problem is one ConfigError."""
  from mrisr_jax import spec

  return spec.resolve(config)
