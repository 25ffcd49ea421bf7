"""Forward+backward time and peak memory of every attention variant against sequence length.

  python experiments/scaling.py --workdir=runs/scaling            # T = 512 ... 16384
  python experiments/scaling.py --workdir=runs/scaling_quick --quick   # T <= 4096, a few minutes
  python experiments/scaling.py --workdir=runs/scaling --report_only   # rebuild the report

Writes scaling.jsonl (one line per measured point; a rerun skips points already there),
scaling.md (time and memory ratios to dense, log–log slopes, crossover lengths) and scaling.png.
The full sweep takes tens of minutes on a 2-core CPU (dense alone needs several GiB at 16384).
"""
import dataclasses
import json

from absl import app, flags

from attnzoo import scaling

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for scaling.jsonl, scaling.md and scaling.png.')
flags.DEFINE_bool('quick', False, 'Short preset: T up to 4096, fewer repeats, smaller budget.')
flags.DEFINE_bool('report_only', False, 'Only rebuild the report from scaling.jsonl.')
flags.DEFINE_list('lengths', None, 'Sequence lengths (default 512,...,16384; quick: ...,4096).')
flags.DEFINE_list('variants', None, 'Variants to measure (default: all but dense presets).')
flags.DEFINE_integer('tokens', None, 'B·T, fixed across lengths (default 16384).')
flags.DEFINE_integer('repeats', None, 'Timed repeats per point (default 5; quick: 2).')
flags.DEFINE_float('time_budget_s', None,
                   'A step slower than this skips the variant\'s larger lengths (default 30; '
                   'quick: 15).')
flags.DEFINE_integer('max_bytes', None, 'Compiled peak above this is recorded as oom '
                     '(default: 90% of accelerator memory, or half the host RAM).')
flags.DEFINE_string('options', '{}', 'JSON per-variant option overrides, e.g. '
                    '\'{"longformer": {"window": 256}}\' (over scaling.VARIANT_OPTIONS).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  if not FLAGS.report_only:
    settings = scaling.QUICK if FLAGS.quick else scaling.Settings()
    overrides = {
        'lengths': FLAGS.lengths and tuple(int(t) for t in FLAGS.lengths),
        'variants': FLAGS.variants and tuple(FLAGS.variants), 'tokens': FLAGS.tokens,
        'repeats': FLAGS.repeats, 'time_budget_s': FLAGS.time_budget_s,
        'max_bytes': FLAGS.max_bytes, 'options': json.loads(FLAGS.options) or None}
    settings = dataclasses.replace(settings,
                                   **{k: v for k, v in overrides.items() if v is not None})
    scaling.run(FLAGS.workdir, settings, log=lambda line: print(line, flush=True))
  print(scaling.report(FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
