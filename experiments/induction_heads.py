"""Induction-head emergence across attention variants (Olsson et al. 2022).

  python experiments/induction_heads.py --workdir=runs/induction                  # dense causal
  python experiments/induction_heads.py --workdir=runs/induction_all --variants=all
  python experiments/induction_heads.py --workdir=runs/induction \
      --variants=causal,longformer:window=4,performer:num_features=16,causal+smear
  python experiments/induction_heads.py --workdir=runs/induction --report_only

Each variant trains a 2-layer attention-only decoder and a 1-layer control (`+smear`: the
1-layer model with smeared keys only). Writes <workdir>/<run>/{metrics,scores}.jsonl, then
report.md, report.json, curves.png and attention_<variant>.png, rebuilt from those files by
--report_only. Finished runs with the same config are reused when rerun.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

from attnzoo import induction

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                           'induction_heads.py'), 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the runs, report and figures.')
flags.DEFINE_list('variants', ['causal'], 'Variant specs name[+smear][:opt=val,...], or all.')
flags.DEFINE_bool('report_only', False, 'Only rebuild the report and figures from the files.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.report_only:
    print(induction.report(FLAGS.workdir))
  else:
    print(induction.run(FLAGS.config, FLAGS.workdir, FLAGS.variants))


if __name__ == '__main__':
  app.run(main)
