"""Olsson et al.'s ICL score on text beside prefix-matching heads (attnzoo/studies/icl_text).

  python experiments/icl_text.py --workdir=runs/icl_text

Config, runtime and what it shows: configs/icl_text.py. Any value can be overridden as in
training, e.g. --config.train.num_steps=3000.
"""
import os

from absl import flags
from ml_collections import config_flags

from attnzoo import cli
from attnzoo.studies import icl_text

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'configs', 'icl_text.py'), 'Study config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the runs, report.md and icl.png.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  icl_text.run(FLAGS.config, FLAGS.workdir, log=lambda line: print(line, flush=True))
  print(f'wrote {FLAGS.workdir}/report.md, icl.png, and one training run per directory')


if __name__ == '__main__':
  cli.run(main)
