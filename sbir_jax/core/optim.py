"""One optimizer factory for every task, read from `config.optimizer`.

  name            sgd (with `momentum`) | adam (with `b1`, `b2`) | adamw
                  (Adam with `weight_decay` decoupled from the gradient
                  statistics, Loshchilov & Hutter)
  learning_rate   the base rate; `schedule` multiplies the final update:
  schedule        constant | cosine (linear warm-up over `warmup_steps`, then
                  cosine decay to 0 at num_train_steps)
  grad_clip_norm  clip by global norm first (0 = off)
  weight_decay    sgd, adam: L2, decay added to the gradient; adamw: decay
                  added to Adam's update (0 = off)
  groups          {name: dict(prefix=..., <fields above to override>)}: the
                  parameters under `prefix` get their own optimizer (e.g.
                  CAAE's discriminator, with its own learning rate)
and `config.frozen`: parameter prefixes that never move (zero updates, no
decay). Non-trained variables (BatchNorm statistics) are not parameters at
all (`core/state.py`), so no rule needs to protect them.
"""
from typing import Any, Sequence

import flax.traverse_util
import ml_collections
import optax

SCHEDULES = ('constant', 'cosine')
_BASE_GROUP = 'default'
_FROZEN = 'frozen'


def _under(name: str, prefix: str) -> bool:
  return name == prefix or name.startswith(prefix + '/')


def _base_transform(opt: Any) -> optax.GradientTransformation:
  if opt['name'] == 'sgd':
    tx = optax.sgd(opt['learning_rate'], momentum=opt['momentum'] or None)
  elif opt['name'] == 'adam':
    tx = optax.adam(opt['learning_rate'], b1=opt['b1'], b2=opt['b2'])
  elif opt['name'] == 'adamw':
    tx = optax.adamw(opt['learning_rate'], b1=opt['b1'], b2=opt['b2'],
                     weight_decay=opt['weight_decay'])
  else:
    raise ValueError(f"config.optimizer.name={opt['name']!r}; use sgd, adam or adamw.")
  chain = []
  if opt['grad_clip_norm']:
    chain.append(optax.clip_by_global_norm(opt['grad_clip_norm']))
  if opt['weight_decay'] and opt['name'] != 'adamw':
    chain.append(optax.add_decayed_weights(opt['weight_decay']))
  return optax.chain(*chain, tx)


def parameter_labels(params: Any, groups: dict[str, str],
                     frozen: Sequence[str] = ()) -> Any:
  """Per parameter: 'frozen', the name of the group whose prefix holds it,
  or 'default'. A prefix that names no parameter is an error."""
  names = flax.traverse_util.flatten_dict(params, sep='/')
  modules = sorted({n.rsplit('/', 1)[0] for n in names})
  for what, prefixes in (('config.frozen', list(frozen)),
                         ('config.optimizer.groups', list(groups.values()))):
    unknown = [p for p in prefixes if not any(_under(n, p) for n in names)]
    if unknown:
      raise ValueError(f'{what} names {unknown}, which match no parameter; '
                       f'the model has {modules}.')

  def label(name: str) -> str:
    if any(_under(name, p) for p in frozen):
      return _FROZEN
    return next((g for g, p in groups.items() if _under(name, p)), _BASE_GROUP)
  return flax.traverse_util.unflatten_dict({n: label(n) for n in names}, sep='/')


def _schedule_factor(opt: Any, num_train_steps: int):
  if opt['schedule'] not in SCHEDULES:
    raise ValueError(f"config.optimizer.schedule={opt['schedule']!r}; use one of "
                     f'{SCHEDULES}.')
  if opt['schedule'] == 'constant':
    return None
  if not 0 <= opt['warmup_steps'] < num_train_steps:
    raise ValueError(f"config.optimizer.warmup_steps={opt['warmup_steps']} must be "
                     f'in [0, num_train_steps={num_train_steps}).')
  return optax.warmup_cosine_decay_schedule(0.0, 1.0, opt['warmup_steps'],
                                            num_train_steps, 0.0)


def make_optimizer(opt: ml_collections.ConfigDict, num_train_steps: int,
                   frozen: Sequence[str] = ()) -> optax.GradientTransformation:
  """The optimizer of `config.optimizer` (module docstring), for any params."""
  opt = opt.to_dict() if isinstance(opt, ml_collections.ConfigDict) else dict(opt)
  groups = opt.pop('groups', None) or {}
  transforms = {_BASE_GROUP: _base_transform(opt)}
  prefixes = {}
  for name, group in groups.items():
    group = dict(group)
    prefixes[name] = group.pop('prefix')
    unknown = sorted(set(group) - set(opt))
    if unknown:
      raise ValueError(f'config.optimizer.groups.{name} sets {unknown}; a group may '
                       f'override {sorted(set(opt) - {"schedule", "warmup_steps"})}.')
    transforms[name] = _base_transform({**opt, **group})
  if groups or frozen:
    transforms[_FROZEN] = optax.set_to_zero()
    tx = optax.multi_transform(
        transforms, lambda params: parameter_labels(params, prefixes, tuple(frozen)))
  else:
    tx = transforms[_BASE_GROUP]
  factor = _schedule_factor(opt, num_train_steps)
  # Scaling the final update scales the learning rate (Adam and SGD alike).
  return tx if factor is None else optax.chain(tx, optax.scale_by_schedule(factor))
