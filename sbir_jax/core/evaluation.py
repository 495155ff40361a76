"""Evaluators declared in the config, found by name, each with its own cadence.

  config.evals.<name> = dict(type=..., pred=..., split=..., every_steps=...)

`type` names a module (a short name is one of `sbir_jax/evaluators/`, a
dotted one any module) whose `Evaluator(predict_fn, split, config)` has
`run(variables) -> {metric: value}`; `pred` names the task's predict
function it reads (`task.predict_fns`); `every_steps` > 0 also runs it
during training at that cadence (0: only on the selected checkpoint at the
end). Metrics are reported as `<prefix>_<metric>`, the prefix being the
eval's `prefix` if it has one, else its name (`val_acc@1`, `test_mAP@all`).
An evaluator of a split the task's data does not have is skipped, and the
log says so. `config.selection_metric` (e.g. 'val_acc@1'; '' = latest)
picks the checkpoint; its value is written with every checkpoint.
"""
import dataclasses
import importlib
from typing import Any

import ml_collections
from absl import logging


@dataclasses.dataclass
class NamedEvaluator:
  name: str
  prefix: str
  split: str
  every_steps: int
  evaluator: Any

  def run(self, variables: dict) -> dict[str, float]:
    return {f'{self.prefix}_{k}': v for k, v in self.evaluator.run(variables).items()}


def _module(type_name: str):
  name = type_name if '.' in type_name else f'sbir_jax.evaluators.{type_name}'
  try:
    module = importlib.import_module(name)
  except ModuleNotFoundError as e:
    raise ValueError(f'config.evals type {type_name!r}: no module {name}.') from e
  if not hasattr(module, 'Evaluator'):
    raise ValueError(f'{name} has no `Evaluator` class (see sbir_jax/core/evaluation.py).')
  return module


def make_evaluators(config: ml_collections.ConfigDict, task: Any) -> list[NamedEvaluator]:
  """The evaluators of config.evals whose split the task's data has."""
  out = []
  predict_fns = task.predict_fns
  for name, spec in config.evals.items():
    if spec.split not in task.splits:
      logging.info('Eval %r skipped: the data has no %r split.', name, spec.split)
      continue
    if spec.pred not in predict_fns:
      raise ValueError(f'config.evals.{name}.pred={spec.pred!r}; the task predicts '
                       f'{sorted(predict_fns)}.')
    evaluator = _module(spec.type).Evaluator(predict_fns[spec.pred], spec.split, config)
    out.append(NamedEvaluator(name, spec.get('prefix', name), spec.split,
                              spec.every_steps, evaluator))
  return out


def check_selection(config: ml_collections.ConfigDict,
                    evaluators: list[NamedEvaluator]) -> str:
  """The selection metric's evaluator prefix, checked to run at every checkpoint;
  '' when the latest checkpoint is selected (no selection metric or no val data)."""
  metric = config.selection_metric
  if not metric:
    return ''
  prefix = metric.split('_', 1)[0]
  if not any(e.prefix == prefix for e in evaluators):
    logging.info('Selection metric %s has no evaluator here: selecting the latest '
                 'checkpoint.', metric)
    return ''
  # Those that run during training (others with the prefix, e.g. parameter-free
  # baselines, only report at the end).
  runs = [e for e in evaluators if e.prefix == prefix and e.every_steps > 0]
  every = config.checkpoint_every_steps
  if not runs or any(every % e.every_steps for e in runs):
    raise ValueError(
        f'config.selection_metric={metric!r} needs its evaluator(s) '
        f'{[e.name for e in runs]} at every checkpoint: set their every_steps to a '
        f'divisor of config.checkpoint_every_steps={every}.')
  return metric


def run_all(evaluators: list[NamedEvaluator], variables: dict,
            step: int | None = None, last_step: int | None = None) -> dict[str, float]:
  """Every evaluator (step None), or those due at training `step`: every
  `every_steps`, and at the last step those that run during training."""
  metrics = {}
  for e in evaluators:
    if step is None or (e.every_steps > 0 and (step % e.every_steps == 0
                                               or step == last_step)):
      metrics.update(e.run(variables))
  return metrics
