"""attnzoo: attention variants on JAX / Flax NNX / Pallas, a tiny decoder and toy tasks.

  attnzoo.variant_names()                      registered attention variants
  attnzoo.capabilities(name)                   causal / cross / key_mask / exact / cost
  attnzoo.make_attention(name, rngs=..., **o)  an nnx.Module: module(q, k, v, causal=, key_mask=)
  attnzoo.load_run(workdir)                    (model, config) from a run's latest checkpoint
"""
from attnzoo.attention import (apply_matrix, capabilities, default_options, make_attention,
                               variant_names)
from attnzoo.layers import MultiHeadAttention
from attnzoo.model import Decoder
from attnzoo.train import load_run, train_and_evaluate
