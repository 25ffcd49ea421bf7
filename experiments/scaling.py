"""Forward+backward time and peak memory of every attention variant against sequence length.

  python experiments/scaling.py --workdir=runs/scaling                 # T = 512 ... 16384
  python experiments/scaling.py --workdir=runs/scaling_quick --config=configs/scaling.py:quick
  python experiments/scaling.py --workdir=runs/scaling --config.study.variants=dense,performer
  python experiments/scaling.py --workdir=runs/scaling --report_only   # rebuild the report

Writes scaling.jsonl (one line per measured point; a rerun skips points already there),
report.md (time and memory ratios to dense, log–log slopes, crossover lengths) and scaling.png.
Settings: configs/scaling.py (`config.study.*`).
"""
import os

from absl import flags
from ml_collections import config_flags

from attnzoo import cli
from attnzoo.studies import scaling

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                           'scaling.py'), 'Study config file[:preset].', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for scaling.jsonl, report.md and scaling.png.')
flags.DEFINE_bool('report_only', False, 'Only rebuild the report from scaling.jsonl.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  if not FLAGS.report_only:
    scaling.run(FLAGS.config, FLAGS.workdir, log=lambda line: print(line, flush=True))
  print(scaling.report(FLAGS.workdir))
  print(f'Results in {FLAGS.workdir}/: {scaling.POINTS} (points), {scaling.REPORT}, '
        f'{scaling.PLOT}')


if __name__ == '__main__':
  cli.run(main)
