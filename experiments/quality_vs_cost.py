"""Quality against cost for every attention variant (attnzoo/studies/quality_vs_cost).

  python experiments/quality_vs_cost.py --workdir=runs/qvc
  python experiments/quality_vs_cost.py --config=configs/quality_vs_cost.py:quick --workdir=...
  python experiments/quality_vs_cost.py --workdir=runs/qvc --config.study.estimate=True
  python experiments/quality_vs_cost.py --workdir=runs/qvc --config.study.report_only=True

Presets, their runtimes and expected results: configs/quality_vs_cost.py. Any value can be
overridden as in training, e.g. --config.train.num_steps=3000 or
--config.study.variants="('causal', 'performer:num_features=32')".
"""
import os

from absl import flags
from ml_collections import config_flags

from attnzoo import cli
from attnzoo import config as config_lib
from attnzoo.studies import quality_vs_cost

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', 'quality_vs_cost.py'), 'Study config file (:preset).',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the runs, report.md and the plots.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  # The report estimates the GPU-sized preset's CPU time from the steps timed in this run.
  full = ({} if FLAGS.config.study.estimate else
          {'full': config_lib.config_file('quality_vs_cost', 'full')})
  text = quality_vs_cost.run(FLAGS.config, FLAGS.workdir, estimate_for=full,
                             log=lambda line: print(line, flush=True))
  if FLAGS.config.study.estimate:
    print(text)
    return
  print(f'wrote {FLAGS.workdir}/: report.md, rows.jsonl, study.json, pareto_<task>.png, '
        'width.png, breakdown.png, and one training run per directory')


if __name__ == '__main__':
  cli.run(main)
