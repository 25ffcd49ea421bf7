"""KV-cache decoding: greedy tokens with the cache equal greedy tokens from rerunning the full
model each step (MHA, GQA, MQA; RoPE and learned positions); cache size and refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo import decode
from attnzoo.config import base_config


def tiny_model(name, *, num_kv_heads=4, positions='learned', smear_keys=False, mlp=False,
               max_len=8):
  c = base_config().model
  c.vocab_size, c.d_model, c.num_heads, c.num_kv_heads = 16, 16, 4, num_kv_heads
  c.num_layers, c.mlp, c.positions, c.max_len = 2, mlp, positions, max_len
  c.smear_keys = smear_keys
  c.attention.name = name
  model = attnzoo.Decoder(c, rngs=nnx.Rngs(params=0, attention=1))
  model.eval()
  return model


@pytest.mark.parametrize('positions', ['rope', 'learned'])
@pytest.mark.parametrize('name,kv_heads,G', [('causal', 4, 4), ('gqa', 2, 2), ('mqa', 4, 1)])
def test_cached_greedy_equals_recompute(name, kv_heads, G, positions):
  # The GQA case also has an MLP and smears keys (its cache keeps the previous raw key).
  model = tiny_model(name, num_kv_heads=kv_heads, positions=positions,
                     smear_keys=name == 'gqa', mlp=name == 'gqa')
  assert model.blocks[0].attn.num_kv_heads == G
  prompt = jax.random.randint(jax.random.key(1), (2, 3), 0, 16)
  tokens, logits = decode.generate(model, prompt, 6)  # fills max_len: 3 + 6 - 1 = 8
  ref_tokens, ref_logits = decode.generate_recompute(model, prompt, 6)
  assert tokens.shape == (2, 6) and logits.shape == (2, 6, 16)
  np.testing.assert_array_equal(tokens, ref_tokens)
  np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=1e-5)


def test_cache_bytes_scale_with_kv_heads():
  sizes = {}
  for name, g in (('causal', 4), ('gqa', 2), ('mqa', 4)):
    model = tiny_model(name, num_kv_heads=g)
    cache = decode.init_cache(model, batch_size=3)
    G = model.blocks[0].attn.num_kv_heads
    assert cache.k[0].shape == (3, G, 4, 8) and cache.v[0].shape == (3, G, 8, 4)
    sizes[name] = cache.nbytes()
  assert sizes['causal'] == 2 * sizes['gqa'] == 4 * sizes['mqa']
  assert sizes['mqa'] == decode.kv_cache_bytes(num_layers=2, batch_size=3, length=8,
                                               num_kv_heads=1, head_dim=4)


def test_undecodable_models_are_refused():
  with pytest.raises(ValueError, match='model.attention.name'):
    decode.init_cache(tiny_model('performer'), batch_size=1)
  model = tiny_model('causal')
  model.causal = False
  with pytest.raises(ValueError, match='model.causal'):
    decode.init_cache(model, batch_size=1)
  with pytest.raises(ValueError, match='num_tokens'):
    decode.generate(tiny_model('causal'), jnp.zeros((1, 4), jnp.int32), 6)
