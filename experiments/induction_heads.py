"""Induction-head emergence across attention variants (Olsson et al. 2022).

  python experiments/induction_heads.py --workdir=runs/induction_heads            # dense causal
  python experiments/induction_heads.py --workdir=runs/ih_all --variants=all
  python experiments/induction_heads.py --workdir=runs/ih \
      --variants=causal,longformer:window=4,performer:num_features=16,causal:model.smear_keys=true
  python experiments/induction_heads.py --workdir=runs/induction_heads --report_only

Each variant trains a 2-layer attention-only decoder and a 1-layer control (a spec with
`model.smear_keys=true`: the 1-layer model only; `model.num_layers=N`: that depth only), each a
normal training run in <workdir>/<run>/ (checkpointed, resumable, `attnzoo.load_run`), then
writes report.md, report.json, curves.png and attention_<variant>.png, rebuilt from the run
files by --report_only. Presets are config files (--config=configs/induction_heads_*.py),
overridable with --config.x=y.
"""
import os

from absl import flags
from ml_collections import config_flags

from attnzoo import cli
from attnzoo.studies import induction

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'configs',
                           'induction_heads.py'), 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for the runs, report and figures.')
flags.DEFINE_list('variants', None, 'Variant specs name[:opt=val,...], or all (default: the '
                  "config's study.variants).")
flags.DEFINE_bool('report_only', False, 'Only rebuild the report and figures from the files.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  del argv
  if not FLAGS.report_only:
    induction.run(FLAGS.config, FLAGS.workdir, FLAGS.variants)
  else:
    induction.report(FLAGS.workdir)
  print(induction.outputs(FLAGS.workdir))


if __name__ == '__main__':
  cli.run(main)
