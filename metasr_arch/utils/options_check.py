"""One check of a whole BasicSR options file, before anything is created on disk.

Every key is looked up in the tables below (BasicSR's keys and this plugin's), in the dataset class's
declaration (``OPTIONS`` on the plugin's datasets), in the constructor signatures of the registered
network, loss, optimizer and scheduler it names, or in the top-level ``extra_keys`` list, where a fork
names the keys its own code reads (``extra_keys: [train.my_weight, datasets.*.my_flag]``; ``*`` stands
for one level). An unknown key is an ``OptionError`` with the closest valid key. Adding a key the
plugin reads is one line in a table (or in a dataset class's ``OPTIONS``).

Arch-free (the ground floor): registered classes are found through BasicSR's registries.
"""
import fnmatch
import inspect
from typing import Callable, Dict, Iterable, Mapping, Optional

from metasr_arch.utils.numbers import parse_real
from metasr_arch.utils.options import OptionError, _closest, check_network_options

ALLOW_KEY = 'extra_keys'


def parse_count(value, name: str, minimum: int = 0) -> int:
    """A whole number: ``5000`` or, as BasicSR's own files write iteration counts, ``!!float 5e3``."""
    number = parse_real(value, name, minimum)
    if number != int(number):
        raise ValueError(f'{name} {value!r} must be a whole number')
    return int(number)


TOP_LEVEL = (
    'name', 'model_type', 'scale', 'num_gpu', 'manual_seed', 'find_unused_parameters', 'datasets', 'path', 'train',
    'val', 'logger', 'dist_params', ALLOW_KEY,
    'bicubic_skip',  # MetaSRModel
    # set by BasicSR's parse_options / train_pipeline (present after parsing)
    'is_train', 'dist', 'rank', 'world_size', 'auto_resume', 'root_path',
)
TRAIN = (
    'total_iter', 'warmup_iter', 'ema_decay', 'optim_g', 'optim_d', 'scheduler', 'pixel_opt', 'perceptual_opt',
    'gan_opt', 'ldl_opt', 'net_d_iters', 'net_d_init_iters',  # BasicSR SRModel / SRGANModel
    'scale_sampler', 'lr_patch_size', 'out_size', 'lq_quantize', 'amp', 'grad_scaler', 'compile',
    'channels_last',  # MetaSRModel
    'r1_opt', 'd_crop_multiple',  # MetaSRGANModel
    'trunk_lr_scale', 'freeze_trunk_iters',  # MetaSR (issue 20): trunk learning-rate multiplier, frozen iterations
)
VAL = ('val_freq', 'save_img', 'suffix', 'metrics', 'pbar',  # BasicSR
       'scales', 'lr_size', 'lq_quantize', 'tile', 'amp', 'save_bicubic')  # MetaSRModel
LOGGER = ('print_freq', 'save_checkpoint_freq', 'use_tb_logger', 'wandb',  # BasicSR
          'save_checkpoint_format')  # MetaSRModel
WANDB = ('project', 'resume_id')
PATH = ('pretrain_network_g', 'strict_load_g', 'param_key_g', 'pretrain_network_d', 'strict_load_d', 'param_key_d',
        'resume_state', 'ignore_resume_networks',
        # set by BasicSR's parse_options
        'experiments_root', 'models', 'training_states', 'log', 'visualization', 'results_root')
DIST_PARAMS = ('backend', 'port')
# read by BasicSR's build_dataset / build_dataloader / parse_options for every dataset
DATASET_COMMON = ('name', 'type', 'phase', 'scale', 'batch_size_per_gpu', 'num_worker_per_gpu', 'use_shuffle',
                  'dataset_enlarge_ratio', 'prefetch_mode', 'num_prefetch_queue', 'pin_memory', 'persistent_workers')
# BasicSR's image datasets (their __init__/__getitem__ reads); plugin datasets declare ``OPTIONS`` themselves
BASICSR_DATASETS = {
    'PairedImageDataset': ('dataroot_gt', 'dataroot_lq', 'meta_info_file', 'io_backend', 'filename_tmpl', 'gt_size',
                           'use_hflip', 'use_rot', 'mean', 'std', 'color'),
    'SingleImageDataset': ('dataroot_lq', 'meta_info_file', 'io_backend', 'mean', 'std', 'color'),
}
# keys BasicSR's train/test pipelines read with [] (a raw KeyError, often after the folders exist)
REQUIRED_TRAIN = {'train': ('total_iter', 'optim_g', 'scheduler'), 'logger': ('print_freq', 'save_checkpoint_freq'),
                  'val': ('val_freq', 'save_img')}
REQUIRED_TEST = {'val': ('save_img', )}
# option -> (parser, minimum): numbers BasicSR or the plugin computes with
NUMBERS: Dict[str, tuple] = {
    'manual_seed': (parse_count, 0), 'train.total_iter': (parse_count, 1), 'train.warmup_iter': (parse_count, -1),
    'train.ema_decay': (parse_real, 0), 'train.net_d_iters': (parse_count, 1), 'train.net_d_init_iters': (parse_count, 0),
    'train.d_crop_multiple': (parse_count, 1), 'train.trunk_lr_scale': (parse_real, 0),
    'train.freeze_trunk_iters': (parse_count, 0), 'train.lq_quantize': (parse_count, 1),
    'val.val_freq': (parse_count, 1), 'logger.print_freq': (parse_count, 1), 'logger.save_checkpoint_freq': (parse_count, 1),
    'dist_params.port': (parse_count, 0), 'train.optim_g.lr': (parse_real, 0), 'train.optim_d.lr': (parse_real, 0),
}
DATASET_NUMBERS = {'batch_size_per_gpu': (parse_count, 1), 'num_worker_per_gpu': (parse_count, 0),
                   'dataset_enlarge_ratio': (parse_count, 1), 'num_prefetch_queue': (parse_count, 1)}
# BasicSR's setup_schedulers: the type names it accepts and the class each builds
SCHEDULERS = {'MultiStepLR': 'MultiStepRestartLR', 'MultiStepRestartLR': 'MultiStepRestartLR',
              'CosineAnnealingRestartLR': 'CosineAnnealingRestartLR'}


class _Allowed:
    """The ``extra_keys`` patterns: dotted places a fork's code reads (``train.my_weight``, ``datasets.*.flag``)."""

    def __init__(self, patterns):
        if patterns is None:
            patterns = []
        if not isinstance(patterns, (list, tuple)) or not all(isinstance(p, str) and p for p in patterns):
            raise OptionError(f'{ALLOW_KEY} must be a list of dotted option names (e.g. [train.my_weight, '
                              f'datasets.*.my_flag]), got {patterns!r}')
        self.patterns = list(patterns)

    def __contains__(self, place: str) -> bool:
        return any(fnmatch.fnmatchcase(place, p) and place.count('.') == p.count('.') for p in self.patterns)


def _keys(section: Mapping, valid: Iterable[str], where: str, allowed: _Allowed) -> None:
    """Every key of ``section`` must be in ``valid`` or allowed by ``extra_keys``."""
    if not isinstance(section, Mapping):
        raise OptionError(f'{where} must be a mapping, got {section!r}')
    valid = list(valid)
    for key in section:
        place = f'{where}.{key}' if where else str(key)
        if key not in valid and place not in allowed:
            raise OptionError(f'{place}: unknown option{_closest(str(key), valid)} (valid in '
                              f'{where or "the top level"}: {", ".join(valid)}; a key your fork reads: '
                              f'list it in {ALLOW_KEY})')


def _signature_keys(obj, skip: int = 0) -> Optional[list]:
    """Keyword names of a callable's parameters (after the first ``skip``), None when it takes ``**kwargs``."""
    try:
        params = list(inspect.signature(obj).parameters.values())[skip:]
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not p.VAR_POSITIONAL]


def _by_signature(section: Mapping, keys: Optional[list], where: str, allowed: _Allowed) -> None:
    """``_keys`` against a signature's keywords (plus ``type``); nothing to check for ``**kwargs``."""
    if keys is not None:
        _keys(section, ['type'] + keys, where, allowed)


def _numbers(opt: Mapping, table: Mapping, where: str = '') -> None:
    for dotted, (parse, minimum) in table.items():
        node, parts = opt, dotted.split('.')
        for part in parts:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            continue
        try:
            parse(node, f'{where}{dotted}', minimum)
        except ValueError as err:
            raise OptionError(str(err)) from None


def _check_registered(section: Mapping, registry, where: str, allowed: _Allowed, kind: str) -> None:
    """``{type: X, **kwargs}`` against X's constructor in ``registry``."""
    if not isinstance(section, Mapping) or 'type' not in section:
        raise OptionError(f'{where} must be a mapping with a type, got {section!r}')
    names = sorted(registry._obj_map)  # noqa: SLF001 (BasicSR has no public listing)
    if section['type'] not in registry:
        raise OptionError(f'{where}.type: {section["type"]!r} is not a registered {kind}'
                          f'{_closest(str(section["type"]), names)}')
    _by_signature(section, _signature_keys(registry.get(section['type'])), where, allowed)


def _check_optimizer(section: Mapping, where: str, allowed: _Allowed, model_cls) -> None:
    import torch
    if not isinstance(section, Mapping) or 'type' not in section:
        raise OptionError(f'{where} must be a mapping with a type (e.g. {{type: Adam, lr: 1e-4}}), got {section!r}')
    names = sorted(n for n, c in vars(torch.optim).items()
                   if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer)
    kind = section['type']
    if kind not in names:
        raise OptionError(f'{where}.type: {kind!r} is not a torch.optim optimizer{_closest(str(kind), names)}')
    _by_signature(section, _signature_keys(getattr(torch.optim, kind), skip=1), where, allowed)
    if 'lr' not in section:
        raise OptionError(f'{where}: lr is required (BasicSR passes it to the optimizer)')
    kwargs = {k: v for k, v in section.items() if k != 'type' and f'{where}.{k}' not in allowed}
    try:  # the model's own get_optimizer on one dummy parameter: refuses types it lacks, torch refuses values
        model_cls.get_optimizer(None, kind, [torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except NotImplementedError:
        raise OptionError(f'{where}.type: {kind} is not supported by {model_cls.__name__}.get_optimizer '
                          '(BasicSR 1.4.2 supports Adam)') from None
    except (ValueError, TypeError) as err:
        raise OptionError(f'{where}: {err}') from None
    except AttributeError:  # a fork's get_optimizer that needs a real model: its own errors will tell
        pass


def _check_scheduler(section: Mapping, where: str, allowed: _Allowed) -> None:
    import torch
    from basicsr.models import lr_scheduler
    if not isinstance(section, Mapping) or 'type' not in section:
        raise OptionError(f'{where} must be a mapping with a type (e.g. {{type: MultiStepLR, milestones: [..]}})')
    kind = section['type']
    if kind not in SCHEDULERS:
        raise OptionError(f'{where}.type: {kind!r} is not one of BasicSR\'s schedulers ({", ".join(SCHEDULERS)})'
                          f'{_closest(str(kind), list(SCHEDULERS))}')
    cls = getattr(lr_scheduler, SCHEDULERS[kind])
    _by_signature(section, _signature_keys(cls, skip=1), where, allowed)
    kwargs = {k: v for k, v in section.items() if k != 'type' and f'{where}.{k}' not in allowed}
    try:
        cls(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), **kwargs)
    except (ValueError, TypeError) as err:
        raise OptionError(f'{where}: {err}') from None


def _check_datasets(datasets: Mapping, allowed: _Allowed) -> None:
    from basicsr.utils.registry import DATASET_REGISTRY
    if not isinstance(datasets, Mapping) or not datasets:
        raise OptionError(f'datasets must be a mapping of phases (train, val, test_1, ...), got {datasets!r}')
    for phase, ds in datasets.items():
        where = f'datasets.{phase}'
        if not isinstance(ds, Mapping) or 'type' not in ds:
            raise OptionError(f'{where} must be a mapping with a type (e.g. type: MetaSRGTDataset), got {ds!r}')
        if str(phase).split('_')[0] not in ('train', 'val', 'test'):
            raise OptionError(f'{where}: the phase must be train, val or test (val_2, test_1, ... for more)')
        names = sorted(DATASET_REGISTRY._obj_map)  # noqa: SLF001
        if ds['type'] not in DATASET_REGISTRY:
            raise OptionError(f'{where}.type: {ds["type"]!r} is not a registered dataset'
                              f'{_closest(str(ds["type"]), names)}')
        declared = getattr(DATASET_REGISTRY.get(ds['type']), 'OPTIONS', None) or BASICSR_DATASETS.get(ds['type'])
        if declared is not None:  # a fork's dataset without a declaration: its keys are its own business
            _keys(ds, DATASET_COMMON + tuple(declared), where, allowed)
        _numbers(ds, DATASET_NUMBERS, f'{where}.')


def _is_sr_model(model_cls) -> bool:
    from basicsr.models.sr_model import SRModel
    return isinstance(model_cls, type) and issubclass(model_cls, SRModel)


def check_options(opt: Mapping, is_train: bool = True) -> None:
    """Check a whole options dict (as read from the file, or after BasicSR's ``parse_options``).

    Args:
        opt: the options (top-level mapping).
        is_train: training (``train``, ``logger`` required) or test options.
    Raises:
        OptionError naming the first problem: an unknown key (with the closest valid one), a missing
        required key, a bad number, an unknown type, or what the model class's ``check_options`` finds.
    """
    from basicsr.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
    if not isinstance(opt, Mapping):
        raise OptionError(f'the options file must hold a mapping of options, got {type(opt).__name__}')
    allowed = _Allowed(opt.get(ALLOW_KEY))
    # unknown keys first: a typo (val_freqq) is the likelier cause of a "missing" key
    _keys({k: v for k, v in opt.items() if not (isinstance(k, str) and k.startswith('network_'))}, TOP_LEVEL, '',
          allowed)
    for section, valid in (('path', PATH), ('val', VAL), ('logger', LOGGER), ('dist_params', DIST_PARAMS),
                           ('train', TRAIN)):
        if opt.get(section) is not None:
            _keys(opt[section], valid, section, allowed)
    wandb = (opt.get('logger') or {}).get('wandb')
    if wandb is not None:
        _keys(wandb, WANDB, 'logger.wandb', allowed)
    if opt.get('datasets') is not None:
        _check_datasets(opt['datasets'], allowed)
    for key, value in opt.items():
        if isinstance(key, str) and key.startswith('network_') and value is not None and key not in allowed:
            check_network_options(value, key)
    required = ('name', 'model_type', 'num_gpu', 'datasets', 'path') + (('train', 'logger') if is_train else ())
    missing = [k for k in required if k not in opt]
    if missing:
        raise OptionError(f'missing option(s) {", ".join(missing)} (BasicSR reads them; e.g. num_gpu: auto, path: {{}})')
    for section, keys in (REQUIRED_TRAIN if is_train else REQUIRED_TEST).items():
        if section == 'val' and is_train and opt.get('val') is None:
            continue  # training without validation
        absent = [k for k in keys if not isinstance(opt.get(section), Mapping) or k not in opt[section]]
        if absent:
            raise OptionError(f'missing option(s) {", ".join(f"{section}.{k}" for k in absent)} (BasicSR reads them)')
    if not isinstance(opt['name'], str) or not opt['name']:
        raise OptionError(f'name must be a non-empty text (the experiment folder\'s name), got {opt["name"]!r}')
    if opt['model_type'] not in MODEL_REGISTRY:
        raise OptionError(f'model_type: {opt["model_type"]!r} is not a registered model'
                          f'{_closest(str(opt["model_type"]), sorted(MODEL_REGISTRY._obj_map))}')  # noqa: SLF001
    if opt['num_gpu'] != 'auto':
        _numbers(opt, {'num_gpu': (parse_count, 0)})
    _numbers(opt, NUMBERS)
    model_cls = MODEL_REGISTRY.get(opt['model_type'])
    train = opt.get('train') or {}
    if is_train and not train.get('pixel_opt') and not train.get('perceptual_opt') and _is_sr_model(model_cls):
        raise OptionError('train.pixel_opt or train.perceptual_opt is required (SRModel trains on at least one, '
                          'e.g. pixel_opt: {type: L1Loss, loss_weight: 1.0})')
    for key, value in train.items():
        if f'train.{key}' in allowed or value is None:
            continue
        if key.startswith('optim_'):
            _check_optimizer(value, f'train.{key}', allowed, model_cls)
        elif key == 'scheduler':
            _check_scheduler(value, 'train.scheduler', allowed)
        elif key.endswith('_opt') and isinstance(value, Mapping) and 'type' in value:
            _check_registered(value, LOSS_REGISTRY, f'train.{key}', allowed, 'loss')
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        _check_registered(metric, METRIC_REGISTRY, f'val.metrics.{name}', allowed, 'metric')
    model_check: Optional[Callable] = getattr(model_cls, 'check_options', None)
    if model_check is not None:
        try:
            model_check(opt if opt.get('is_train') == is_train else dict(opt, is_train=is_train))
        except OptionError:
            raise
        except (ValueError, TypeError) as err:
            raise OptionError(str(err)) from None
