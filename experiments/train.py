"""Train a decoder from a config file.

  python experiments/train.py --config=configs/induction.py --workdir=runs/induction \
      --config.model.attention.name=performer

Multi-host: pass --coordinator_address, --num_processes and --process_id on every host.
"""
from absl import flags
from ml_collections import config_flags

from attnzoo import cli, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for metrics, checkpoints and reports.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host only).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host only).')
flags.DEFINE_integer('process_id', None, 'This process index (multi-host only).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv
  if FLAGS.coordinator_address:
    import jax
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  final = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print('final eval:', ' '.join(f'{k}={v:.4g}' for k, v in final.items() if k != 'split'))
  print(f'wrote {FLAGS.workdir}/: config.json, metrics.jsonl, summary.json, checkpoints/')


if __name__ == '__main__':
  cli.run(main)
