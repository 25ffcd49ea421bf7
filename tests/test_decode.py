"""KV-cache decoding: the cached path equals the full forward for every decodable variant (MHA,
GQA, MQA; RoPE, learned and sinusoidal positions; key smearing; chunks of several tokens), greedy
tokens with the cache equal greedy tokens from rerunning the model, cache layout and size,
`project`, and refusals of models that cannot decode."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attnzoo
from attnzoo import attention, decode, layers
from attnzoo.config import base_config

from helpers import SMALL_OPTIONS


def tiny_model(name, *, num_kv_heads=4, positions='learned', smear_keys=False, mlp=False,
               max_len=8, nope_layers=(), rope_fraction=1.0, scalable_softmax=False,
               **options):
  c = base_config().model
  c.vocab_size, c.d_model, c.num_heads, c.num_kv_heads = 16, 16, 4, num_kv_heads
  c.num_layers, c.mlp, c.positions, c.max_len = 2, mlp, positions, max_len
  c.smear_keys, c.nope_layers, c.rope_fraction = smear_keys, nope_layers, rope_fraction
  c.scalable_softmax = scalable_softmax
  c.attention.name = name
  c.attention[name].update({**SMALL_OPTIONS.get(name, {}), **options})
  model = attnzoo.Decoder(c, rngs=nnx.Rngs(params=0, attention=1))
  model.eval()
  return model


def is_decodable(name):
  return attention.get(name).module.decodable(attention.base.make_options(name))


DECODABLE = [n for n in attention.variant_names() if is_decodable(n)]
REFUSED = [n for n in attention.variant_names() if not is_decodable(n)]


def test_the_exact_causal_variants_declare_themselves_decodable():
  assert DECODABLE == ['blockwise', 'causal', 'cross', 'dense', 'flash', 'gqa', 'mqa']


@pytest.mark.parametrize('name', DECODABLE)
@pytest.mark.parametrize('positions,smear', [('rope', True), ('learned', False),
                                             ('sinusoidal', True)])
def test_cached_chunks_equal_the_full_forward(name, positions, smear):
  # Prefill 3 tokens, then a chunk of 2, then 1, 1, 1: every logit equals the full forward's.
  model = tiny_model(name, num_kv_heads=2, positions=positions, smear_keys=smear, mlp=True)
  tokens = jax.random.randint(jax.random.key(2), (2, 8), 0, 16)
  full = model(tokens)  # [B, 8, V]
  cache = decode.init_cache(model, batch_size=2)
  got, at = [], 0
  for n in (3, 2, 1, 1, 1):
    logits, cache = decode.extend(model, cache, tokens[:, at:at + n])
    got.append(logits)
    at += n
  assert int(cache[0].length) == at == 8
  np.testing.assert_allclose(jnp.concatenate(got, 1), full, atol=2e-5, rtol=2e-5)


def test_nope_layers_skip_rope_and_still_decode():
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 16)
  # RoPE skipped in every layer is the same model as no positions (RoPE has no parameters).
  np.testing.assert_allclose(tiny_model('causal', positions='rope', nope_layers=(0, 1))(tokens),
                             tiny_model('causal', positions='none')(tokens), atol=1e-6)
  model = tiny_model('causal', positions='rope', nope_layers=(1,))
  assert [b.attn.use_rope for b in model.blocks] == [True, False]
  assert not np.allclose(model(tokens), tiny_model('causal', positions='rope')(tokens), atol=1e-3)
  cache = decode.init_cache(model, batch_size=2)
  logits, _ = decode.extend(model, cache, tokens)
  np.testing.assert_allclose(logits, model(tokens), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize('fraction', [1.0, 0.25])
def test_rope_rotates_the_kept_planes_by_position_and_leaves_the_rest(fraction):
  B, T, N, D = 2, 12, 3, 16
  x = jax.random.normal(jax.random.key(0), (B, T, N, D))
  out = np.asarray(layers.rope(x, jnp.arange(T), fraction=fraction))
  kept = round(fraction * D // 2)
  # Reference: plane i = dims (i, i + D/2) turned by angle t * 10000**(-2i/D).
  xs = np.asarray(x)
  for i in range(D // 2):
    a = np.arange(T)[None, :, None] * 10000.0 ** (-2 * i / D) * (i < kept)
    c, s = np.cos(a), np.sin(a)
    np.testing.assert_allclose(out[..., i], xs[..., i] * c - xs[..., i + D // 2] * s, atol=1e-5)
    np.testing.assert_allclose(out[..., i + D // 2], xs[..., i + D // 2] * c + xs[..., i] * s,
                               atol=1e-5)
  # q . k depends on the positions' difference only
  q, k = x[:, :1], x[:, 1:2]
  dot = lambda p, r: np.asarray((layers.rope(q, jnp.array([p]), fraction=fraction)
                                 * layers.rope(k, jnp.array([r]), fraction=fraction)).sum(-1))
  np.testing.assert_allclose(dot(3, 1), dot(40, 38), atol=1e-4)


def test_scalable_softmax_scales_each_query_by_log64_of_its_key_count():
  attn = tiny_model('causal', positions='rope', scalable_softmax=True).blocks[0].attn
  q, k = jax.random.normal(jax.random.key(1), (2, 2, 70, 4, 4))
  pos = jnp.arange(70)
  got_q, got_k = attn.place(q, k, pos)
  want_q, want_k = (layers.rope(x, pos) for x in (q, k))
  scale = np.log(np.arange(1, 71)) / np.log(64)  # 0 at the first query (a single key), 1 at 64
  np.testing.assert_allclose(got_q, want_q * scale[None, :, None, None], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got_k, want_k)


def test_partial_rope_and_scalable_softmax_decode_like_the_forward():
  tokens = jax.random.randint(jax.random.key(3), (2, 8), 0, 16)
  model = tiny_model('causal', positions='rope', rope_fraction=0.5, scalable_softmax=True)
  assert not np.allclose(model(tokens), tiny_model('causal', positions='rope')(tokens), atol=1e-3)
  logits, _ = decode.extend(model, decode.init_cache(model, batch_size=2), tokens)
  np.testing.assert_allclose(logits, model(tokens), atol=2e-5, rtol=2e-5)
  # decoding one token at a time: each step's query is scaled by its own key count
  cache, steps = decode.init_cache(model, batch_size=2), []
  for i in range(8):
    out, cache = decode.extend(model, cache, tokens[:, i:i + 1])
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, 1), model(tokens), atol=2e-5, rtol=2e-5)


def test_positions_rotate_each_sequence_and_keep_the_key_count():
  tokens = jax.random.randint(jax.random.key(4), (2, 8), 0, 16)
  model = tiny_model('causal', positions='rope', rope_fraction=0.5, scalable_softmax=True,
                     max_len=16)
  ar, want = jnp.arange(8), model(tokens)
  # RoPE sees only differences, and Scalable-Softmax counts keys, not positions: shifted
  # positions change nothing
  np.testing.assert_allclose(model(tokens, positions=jnp.stack([ar + 5, ar + 100])), want,
                             atol=5e-5, rtol=5e-5)
  out = model(tokens, positions=jnp.stack([ar, 3 * ar]))  # spread out: the second row only
  np.testing.assert_allclose(out[0], want[0], atol=1e-6)
  assert not np.allclose(out[1], want[1], atol=1e-3)
  with pytest.raises(ValueError, match='positions'):
    tiny_model('causal')(tokens, positions=jnp.stack([ar, ar]))
  with pytest.raises(ValueError, match='positions'):  # a cache fixes its own positions
    model(tokens, positions=ar, cache=model.init_cache(batch_size=2, max_len=16))


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
    assert len(cache) == 2  # one per layer
    assert cache[0].k.shape == (3, G, 4, 8) and cache[0].v.shape == (3, G, 8, 4)  # keys [D, S]
    sizes[name] = decode.cache_bytes(cache)
  assert sizes['causal'] == 2 * sizes['gqa'] == 4 * sizes['mqa']
  assert sizes['mqa'] == decode.kv_cache_bytes(num_layers=2, batch_size=3, length=8,
                                               num_kv_heads=1, head_dim=4)


@pytest.mark.parametrize('positions,smear', [('rope', True), ('none', False)])
def test_project_is_what_the_core_sees(positions, smear):
  model = tiny_model('gqa', num_kv_heads=2, positions=positions, smear_keys=smear)
  attn = model.blocks[0].attn
  attn.smear = None if attn.smear is None else nnx.Param(jnp.array([0.5, -1.0]))
  x = jax.random.normal(jax.random.key(0), (2, 5, 16))
  q, k, v = attn.project(x)
  assert q.shape == (2, 5, 4, 4) and k.shape == v.shape == (2, 5, 2, 4)
  out = attn.core(q, k, v, causal=True)
  np.testing.assert_allclose(attn.o_proj(out.reshape(2, 5, 16)), attn(x, causal=True),
                             atol=1e-6)
  # Key smearing mixes in the previous key: a change at position 2 moves keys 2 and 3 only.
  x2 = x.at[:, 2].add(1.0)
  moved = np.abs(np.asarray(attn.project(x2)[1] - k)).max(axis=(0, 2, 3)) > 1e-6
  np.testing.assert_array_equal(moved, [False, False, True, smear, False])


@pytest.mark.parametrize('name', REFUSED)
def test_variants_that_cannot_decode_are_refused_by_name(name):
  refusal = f"model.attention.name='{name}'.*does not declare itself decodable"
  attn = attnzoo.MultiHeadAttention(16, 4, attention_name=name,
                                    options=SMALL_OPTIONS.get(name), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=refusal):
    attn.init_cache(1, 8)
  if attention.capabilities(name).causal:  # a causal model of it is refused the same way
    with pytest.raises(ValueError, match=refusal):
      decode.generate(tiny_model(name), jnp.zeros((1, 2), jnp.int32), 2)


def test_windowed_flash_is_refused():
  with pytest.raises(ValueError, match=r"model.attention.name='flash'.*window=2"):
    decode.generate(tiny_model('flash', window=2), jnp.zeros((1, 2), jnp.int32), 2)


def test_other_undecodable_models_are_refused():
  model = tiny_model('causal')
  model.causal = False
  with pytest.raises(ValueError, match='model.causal'):
    decode.init_cache(model, batch_size=1)
  with pytest.raises(ValueError, match='num_tokens'):
    decode.generate(tiny_model('causal'), jnp.zeros((1, 4), jnp.int32), 6)
  with pytest.raises(ValueError, match='max_len'):
    decode.init_cache(tiny_model('causal'), batch_size=1, max_len=9)
