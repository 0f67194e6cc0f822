"""Test session set-up: one persistent XLA compilation cache for every test process.

Many tests compile the same small train steps again (resumed runs, several processes, subprocess
CLIs); JAX's persistent cache turns those repeats into a disk read. Set before jax is imported, and
inherited by the subprocesses the tests start. JAX_COMPILATION_CACHE_DIR set by the caller wins.
"""
import os
import tempfile

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), f'mrisr_jax_test_xla_cache_{os.getuid()}'))
