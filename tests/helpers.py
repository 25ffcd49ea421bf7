"""Shared test utilities: small per-variant options, random inputs, config loading."""
import os

import jax
import jax.numpy as jnp
from flax import nnx

import attnzoo
from attnzoo import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Options that make each variant non-trivial at test lengths (several blocks, chunks, ...).
SMALL_OPTIONS = {
    'blockwise': dict(block_k=8),
    'longformer': dict(window=4, global_tokens=1),
    'reformer': dict(chunk_size=4, num_buckets=4, num_hashes=2),
    'linformer': dict(proj_dim=8, max_len=32),
    'performer': dict(num_features=32),
    'flash': dict(block_q=16, block_k=16),
    'ring': dict(block_k=8),
}


def make(name, eval_mode=True, **options):
  module = attnzoo.make_attention(name, rngs=nnx.Rngs(0),
                                  **{**SMALL_OPTIONS.get(name, {}), **options})
  if eval_mode:
    module.eval()
  return module


def qkv(seed, B=2, T=24, S=None, H=4, G=2, D=8, dtype=jnp.float32):
  S = T if S is None else S
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (B, T, H, D), dtype), jax.random.normal(kk, (B, S, G, D), dtype),
          jax.random.normal(kv, (B, S, G, D), dtype))


load_config = config_lib.config_file  # configs/<name>.py's get_config(*args)


def tiny(**overrides):
  """configs/tiny.py with dotted-key overrides, e.g. tiny(**{'train.num_steps': 6})."""
  config = load_config('tiny')
  for key, value in overrides.items():
    target = config
    *path, last = key.split('.')
    for p in path:
      target = target[p]
    target[last] = value
  return config
