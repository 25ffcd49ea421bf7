"""Foundation benchmarks: decoder training throughput vs flax.nnx.MultiHeadAttention, and
blockwise vs dense exact attention (time and compiled peak memory). Writes JSON + Markdown.

  python experiments/benchmarks.py --workdir=runs/bench
"""
import json
import os

from absl import app, flags
from ml_collections import config_flags

from attnzoo import benchmarks

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', 'configs/induction.py', 'Model config for throughput.')
flags.DEFINE_string('workdir', 'runs/bench', 'Where benchmarks.json and benchmarks.md go.')
flags.DEFINE_list('lengths', ['1024', '4096', '16384'], 'Lengths for blockwise vs dense.')


def main(argv):
  del argv
  os.makedirs(FLAGS.workdir, exist_ok=True)
  decoder = benchmarks.decoder_throughput(FLAGS.config)
  print(f'decoder tokens/s: ours {decoder["attnzoo_tokens_per_s"]:.0f}, flax nnx MHA '
        f'{decoder["flax_nnx_mha_tokens_per_s"]:.0f}, ratio {decoder["ratio"]:.2f}')
  exact = benchmarks.exact_attention_cost(tuple(int(t) for t in FLAGS.lengths))
  with open(os.path.join(FLAGS.workdir, 'benchmarks.json'), 'w') as f:
    json.dump({'decoder': decoder, 'exact_attention': exact}, f, indent=2)
  lines = ['# Foundation benchmarks', '',
           f'Decoder training throughput (tokens/s): attnzoo {decoder["attnzoo_tokens_per_s"]:.0f}'
           f', flax.nnx.MultiHeadAttention {decoder["flax_nnx_mha_tokens_per_s"]:.0f}, '
           f'ratio {decoder["ratio"]:.2f}x', '',
           '| T | dense fwd+bwd s | blockwise s | speed (dense/blockwise) | dense MiB | '
           'blockwise MiB | memory (blockwise/dense) |', '|---|---|---|---|---|---|---|']
  fmt = lambda x, f: 'not run (memory)' if x is None else format(x, f)
  for r in exact:
    lines.append(f'| {r["T"]} | {fmt(r["dense_s"], ".3f")} | {fmt(r["blockwise_s"], ".3f")} | '
                 f'{fmt(r.get("speed_ratio"), ".2f")}x | {r["dense_peak_bytes"] / 2**20:.0f} | '
                 f'{r["blockwise_peak_bytes"] / 2**20:.0f} | {r["memory_ratio"]:.3f} |')
  with open(os.path.join(FLAGS.workdir, 'benchmarks.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  app.run(main)
