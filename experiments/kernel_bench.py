"""Attention kernel throughput (TFLOP/s, forward and forward+backward): our flash kernel next to
jax.nn.dot_product_attention (cuDNN, XLA) and JAX's own Pallas attention ops.

  python experiments/kernel_bench.py --workdir=runs/kernel_bench
  python experiments/kernel_bench.py --workdir=runs/kernel_bench --head_dims=128 --repeats=50

B·T = 16K tokens, T in {1K, 2K, 4K, 8K, 16K}, H = 16, D in {64, 128}, bf16, causal and not;
median of 20 timed calls after warm-up. Needs a GPU or TPU (a few minutes there); on CPU it
refuses to run. Writes kernel_bench.json and kernel_bench.md.
"""
import dataclasses
import sys

from absl import app, flags

from attnzoo import kernel_bench

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for kernel_bench.json and kernel_bench.md.')
flags.DEFINE_list('lengths', None, 'Sequence lengths T (B = tokens // T).')
flags.DEFINE_list('head_dims', None, 'Head dims D.')
flags.DEFINE_integer('repeats', None, 'Timed calls per point (median).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  try:
    kernel_bench.require_accelerator()
  except RuntimeError as e:
    sys.exit(str(e))
  overrides = {'lengths': FLAGS.lengths and tuple(int(t) for t in FLAGS.lengths),
               'head_dims': FLAGS.head_dims and tuple(int(d) for d in FLAGS.head_dims),
               'repeats': FLAGS.repeats}
  settings = dataclasses.replace(kernel_bench.Settings(),
                                 **{k: v for k, v in overrides.items() if v is not None})
  kernel_bench.run(FLAGS.workdir, settings)
  with open(f'{FLAGS.workdir}/kernel_bench.md') as f:
    print(f.read())


if __name__ == '__main__':
  app.run(main)
