"""Every config file builds, alone and with each of its variants (no training).

Config files are found by globbing configs/*.py: a new one is tested without
editing this file. A config file is one whose `get_config` takes `arg` first
(`get_config(arg=None)`, what --config=configs/<file>.py:<variants> calls);
the re-export shims (configs/fg_sbir_common.py: `get_config(dataset, arg)`)
and the helpers (base.py, variants.py) are not.
"""
import importlib
import inspect
import pathlib

from absl import flags
from ml_collections import config_flags
import pytest

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / 'configs'
TASKS = ('fg_sbir', 'composed', 'zs_sbir', 'sketch_classification')


def _config_modules() -> dict[str, object]:
  found = {}
  for path in sorted(CONFIGS.glob('*.py')):
    module = importlib.import_module(f'configs.{path.stem}')
    get_config = getattr(module, 'get_config', None)
    if get_config and next(iter(inspect.signature(get_config).parameters)) == 'arg':
      found[path.stem] = module
  return found


MODULES = _config_modules()
# Every variant is valid on its own: none is refused alone, so none is skipped.
CASES = [(name, variant) for name, module in MODULES.items()
         for variant in (None, *getattr(module, 'VARIANTS', {}))]


def test_discovery_finds_every_config_file():
  assert {'shoes', 'chairs', 'handbag', 'shoes_rgb', 'chair_v2', 'css', 'fashion200k',
          'mit_states', 'zs_sketchy', 'zs_doodle', 'sketch_pretrain'} <= set(MODULES)
  for name, module in MODULES.items():
    assert getattr(module, 'VARIANTS', None), (
        f'configs/{name}.py: declare VARIANTS (its table for configs/variants.py).')


@pytest.mark.parametrize('name,variant', CASES)
def test_config_builds(name, variant):
  config = MODULES[name].get_config(variant)
  assert config.is_locked
  assert config.task in TASKS
  for eval_name, spec in config.evals.items():
    assert spec.every_steps == (config.checkpoint_every_steps if eval_name == 'val' else 0)
  if config.selection_metric:
    assert config.selection_metric.split('_')[0] in config.evals


@pytest.mark.parametrize('name', sorted(MODULES))
def test_unknown_variant_lists_every_known_one(name):
  module = MODULES[name]
  with pytest.raises(ValueError, match="^Unknown config variant 'no_such_variant'") as error:
    module.get_config('no_such_variant')
  message = str(error.value)
  assert 'configs/' in message  # Names the file holding the table.
  known = message.split('Known: ')[1].rstrip('.').split(', ')
  assert known == list(module.VARIANTS)


def _flag_config(*argv: str):
  """The config as sbir_jax.main's --config flag parses it."""
  argv = ['prog', *argv]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=values, lock_config=True,
                                  sys_argv=argv)  # Else it reads sys.argv.
  values(argv)
  return values.config


def test_checkpoint_override_moves_validation():
  config = _flag_config(f'--config={CONFIGS / "shoes.py"}:cpu',
                        '--config.checkpoint_every_steps=50')
  assert config.checkpoint_every_steps == 50 and config.evals.val.every_steps == 50
  # One-way: validation's own override leaves the checkpoints alone.
  config = _flag_config(f'--config={CONFIGS / "zs_doodle.py"}:tiny',
                        '--config.evals.val.every_steps=7')
  assert config.evals.val.every_steps == 7 and config.checkpoint_every_steps == 2


@pytest.mark.parametrize('variants', ['caae', 'caae,learning', 'learning,caae'])
def test_caae_discriminator_group_follows_learning_rate(variants):
  from configs import zs_sketchy
  config = zs_sketchy.get_config(variants)
  opt = config.optimizer
  assert opt.groups.discriminator.prefix == 'discriminator'
  assert opt.groups.discriminator.learning_rate == opt.learning_rate == (
      3e-3 if 'learning' in variants else 2e-4)
  opt.learning_rate = 1e-3
  assert opt.groups.discriminator.learning_rate == 1e-3
  opt.groups.discriminator.learning_rate = 5e-4  # Its own rate: the model's stays.
  assert opt.learning_rate == 1e-3
  assert not zs_sketchy.get_config('cvae').optimizer.groups.to_dict()


def test_caae_group_follows_a_flag_override():
  config = _flag_config(f'--config={CONFIGS / "zs_doodle.py"}:caae',
                        '--config.optimizer.learning_rate=0.001')
  assert config.optimizer.groups.discriminator.learning_rate == 0.001


def test_a_dict_spec_never_adds_a_key():
  from configs import variants
  from configs import shoes
  config = shoes.get_config()
  config.unlock()
  with pytest.raises(KeyError, match="'model.atention'"):
    variants.apply(config, 'typo', {'typo': {'model.atention': False}}, 'here')
