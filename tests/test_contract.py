"""The trainer's contract, checked on every config file's `tiny` variant.

For each config found under configs/ (the discovery of test_configs.py, so a
new config is picked up without editing this file): its task builds through
`config.task` alone, the first training batch matches the task's declared
`batch_spec`, two jitted train steps run with a finite loss, every evaluator
of `config.evals` runs and reports under its prefix, and the state saves and
restores bit-equal. Fashion200k and MIT-States have no real data here; they
run on small files written in their release layouts (test_fashion_mit_states).
"""
import math

import jax
import numpy as np
import pytest

from sbir_jax.core import checkpointing
from sbir_jax.core import evaluation
from sbir_jax.core import sharding
from sbir_jax.core import task as task_lib
from sbir_jax.core import trainer
from tests import helpers
from tests.test_configs import MODULES
from tests.test_fashion_mit_states import _mit_states_root
from tests.test_fashion_mit_states import fashion_root  # noqa: F401  (a fixture)

# Variants a config needs besides `tiny` to find data on this machine.
EXTRA_VARIANTS: dict[str, str] = {}
# QMUL Chair V1 is not in the shared data: its config runs on the Shoe V1
# files (same source, builder and task; the chairs config's own settings).
DATASET_STAND_INS = {'chairs': 'shoes'}
# Real data each config reads ($SBIR_JAX_DATA/<folder>), for a clear skip.
DATA = {'shoes': 'qmul_v1', 'chairs': 'qmul_v1', 'handbag': 'qmul_v1',
        'shoes_rgb': 'qmul_v1_rgb', 'chair_v2': 'qmul_chair_v2',
        'sketch_pretrain': 'tu_berlin_40', 'zs_sketchy': 'sketchy_zs_subset',
        'zs_doodle': 'quickdraw_14'}


def _config(name: str, tmp_path, tfds_dir: str, request):
  if name in DATA:
    helpers.require_data(DATA[name])
  config = MODULES[name].get_config(EXTRA_VARIANTS.get(name, '') + 'tiny')
  config.unlock()
  if name in DATASET_STAND_INS:
    config.data.dataset = DATASET_STAND_INS[name]
  if 'tfds_data_dir' in config.get('data', {}):
    config.data.tfds_data_dir = tfds_dir
  if name == 'fashion200k':
    config.data.manual_dir = str(request.getfixturevalue('fashion_root'))
  if name == 'mit_states':
    config.data.manual_dir = str(_mit_states_root(tmp_path))
  if name in ('fashion200k', 'mit_states'):
    config.data.val_fraction = 0.0  # A handful of images: no validation split.
  return config.lock()


def _check_against_spec(batch: dict, spec: dict) -> None:
  assert jax.tree.structure(batch) == jax.tree.structure(spec), (
      f'batch keys {sorted(batch)} != batch_spec keys {sorted(spec)}')
  for (path, array), want in zip(jax.tree_util.tree_flatten_with_path(batch)[0],
                                 jax.tree.leaves(spec)):
    assert (array.shape, np.dtype(array.dtype)) == (want.shape, np.dtype(want.dtype)), (
        f'{jax.tree_util.keystr(path)}: {array.shape} {array.dtype}, declared '
        f'{want.shape} {want.dtype}')


@pytest.mark.parametrize('name', sorted(MODULES))
def test_tiny_variant_meets_the_contract(name, tmp_path, tfds_dir, request):
  config = _config(name, tmp_path, tfds_dir, request)
  mesh = sharding.make_mesh()
  task, state, evaluators = trainer.build(config, mesh)
  assert isinstance(task, task_lib.Task)

  batches = task.train_batches(0)
  first = next(batches)
  _check_against_spec(first, task.batch_spec())

  train_step = trainer.make_train_step(task, config, mesh)
  for batch in (first, next(batches)):
    state, metrics = train_step(state, sharding.to_global(batch, mesh))
    assert math.isfinite(float(metrics['loss']))
  assert int(state.step) == 2

  metrics = evaluation.run_all(evaluators, state.variables)
  for e in evaluators:
    mine = [k for k in metrics if k.startswith(e.prefix + '_')]
    assert mine, f'evaluator {e.name} reported nothing'
    assert all(math.isfinite(metrics[k]) for k in mine)

  manager = checkpointing.make_manager(str(tmp_path / 'run'))
  checkpointing.save(manager, state)
  manager.wait_until_finished()
  restored = checkpointing.restore(manager, 2, trainer.create_state(task, config, mesh))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  task.write_outputs(state.variables, str(tmp_path))


def test_a_task_module_missing_a_member_is_named(tmp_path, monkeypatch):
  package = tmp_path / 'my_tasks'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'half_task.py').write_text('class Task:\n  def load_data(self):\n    return {}\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  config = MODULES['shoes'].get_config('tiny')
  config.unlock()
  config.task = 'my_tasks.half_task'
  with pytest.raises(task_lib.TaskContractError, match="lacks the contract member"
                     r"\(s\) \['batch_spec', 'init_variables'"):
    task_lib.task_class(config)
  config.task = 'no_such_task'
  with pytest.raises(task_lib.TaskContractError, match='no module sbir_jax.tasks.no_such_task'):
    task_lib.task_class(config)
