"""Drop the deformable projector into a PSALM checkout, without editing it.

PSALM (``zamling/PSALM``) needs three changes for a multi-scale projector:

1. its builder ``psalm.model.multimodal_projector.builder.build_vision_projector``
   must know ``mm_projector_type='deformable'``;
2. ``PSALM.encode_images`` passes only the last Swin map
   (``mm_projector(image_features[-1])``); a multi-scale projector needs all
   four;
3. ``--pretrain_mm_mlp_adapter`` is loaded with ``strict=False`` after
   stripping ``mm_projector.``, so a file with other key names loads
   nothing, silently; and ``ModelArguments`` lacks ``--mm_hidden_dim``,
   ``--mm_n_heads``, ``--mm_n_points``.

:func:`apply` makes all of them at run time (monkeypatching the imported
modules); every other projector type keeps PSALM's own code path. This file
imports nothing from PSALM at import time, so it can be imported (and
tested) without PSALM installed. Usage, from the PSALM checkout with this
repository on ``PYTHONPATH``::

    deepspeed third_party/psalm/run_psalm.py train --deepspeed scripts/zero2.json \\
        --mm_projector_type deformable --mm_hidden_dim 256 ... (PSALM's args)

or in Python: ``import psalm_deformable; psalm_deformable.apply()`` before
building the model. See ``docs/integrations/psalm.md``.
"""
import copy
import dataclasses
import functools
import importlib
import logging
import sys
from typing import Dict, List, Optional

logger = logging.getLogger('plugins.psalm')

#: Projector types built by ``plugins.llava``; the rest stay PSALM's.
PLUGIN_PROJECTOR_TYPES = ('deformable',)
#: Types whose projector takes all four Swin maps.
MULTI_SCALE_PROJECTOR_TYPES = ('deformable',)
#: Command-line arguments added to PSALM's ``ModelArguments`` (and copied
#: onto the model config, which is what the builder reads and what
#: ``config.json`` saves for inference).
EXTRA_MODEL_ARGUMENTS = (
    ('mm_hidden_dim', int, 256),
    ('mm_n_heads', int, 8),
    ('mm_n_points', int, 4),
    ('mm_num_tokens', Optional[int], None),
)

BUILDER_MODULE = '{package}.model.multimodal_projector.builder'
MODEL_MODULES = ('{package}.model.llava_arch',
                 '{package}.model.language_model.llava_phi')
TRAIN_MODULE = '{package}.train.train'

_PATCHED = '_plugins_deformable_patch'


def _is_multi_scale(config) -> bool:
    return getattr(config, 'mm_projector_type', None) in \
        MULTI_SCALE_PROJECTOR_TYPES


# -- 1. the builder ------------------------------------------------------------
def make_builder(psalm_build):
    """Wrap PSALM's ``build_vision_projector``: plugin types go to
    ``plugins.llava``'s builder, every other type to PSALM's own."""
    if getattr(psalm_build, _PATCHED, False):
        return psalm_build

    @functools.wraps(psalm_build)
    def build_vision_projector(config, *args, **kwargs):
        if getattr(config, 'mm_projector_type', None) in PLUGIN_PROJECTOR_TYPES:
            from plugins.llava.projector_builder import \
                build_vision_projector as plugins_build
            return plugins_build(config)
        return psalm_build(config, *args, **kwargs)

    setattr(build_vision_projector, _PATCHED, True)
    build_vision_projector.psalm_original = psalm_build
    return build_vision_projector


def register_deformable_projector(package: str = 'psalm') -> List[str]:
    """Register ``deformable`` into PSALM's projector builder.

    PSALM's model files do ``from ..multimodal_projector.builder import
    build_vision_projector``, binding the function at import time, so the
    wrapper is installed in the builder module *and* in every loaded module
    of ``package`` that holds the original. Returns those module names.
    """
    builder = importlib.import_module(BUILDER_MODULE.format(package=package))
    original = getattr(builder.build_vision_projector, 'psalm_original',
                       builder.build_vision_projector)
    wrapped = make_builder(original)
    patched = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == package
                                  or name.startswith(package + '.')):
            continue
        if getattr(module, 'build_vision_projector', None) is original:
            module.build_vision_projector = wrapped
            patched.append(name)
    return patched


# -- 2. encode_images ----------------------------------------------------------
def encode_images(self, images):
    """PSALM's ``encode_images``, passing all four Swin maps to a
    multi-scale projector and the last one to any other (as PSALM does)."""
    features = self.get_model().get_vision_tower()(images)
    projector = self.get_model().mm_projector
    if _is_multi_scale(self.config):
        return projector(list(features))
    if isinstance(features, (list, tuple)):
        features = features[-1]
    return projector(features)


setattr(encode_images, _PATCHED, True)


def patch_encode_images(cls) -> bool:
    """Replace ``cls.encode_images`` (only where ``cls`` defines it)."""
    current = cls.__dict__.get('encode_images')
    if current is None or getattr(current, _PATCHED, False):
        return False
    cls.encode_images = encode_images
    cls.encode_images_psalm_original = current
    return True


# -- 3. projector arguments and strict adapter loading -------------------------
def patch_initialize_vision_modules(cls) -> bool:
    """Wrap ``cls.initialize_vision_modules`` so that it

    * copies ``mm_hidden_dim``/``mm_n_heads``/``mm_n_points``/
      ``mm_num_tokens`` (and ``swin_type``) from ``model_args`` onto the
      model config before the projector is built;
    * for plugin projector types, loads ``pretrain_mm_mlp_adapter`` with
      :func:`plugins.llava.projector_weights.load_projector_weights`
      (``strict=True``: fails loudly when keys do not match) instead of
      PSALM's silent ``strict=False``.
    """
    original = cls.__dict__.get('initialize_vision_modules')
    if original is None or getattr(original, _PATCHED, False):
        return False

    @functools.wraps(original)
    def initialize_vision_modules(self, model_args, *args, **kwargs):
        for name, _, _ in EXTRA_MODEL_ARGUMENTS + (('swin_type', str, None),):
            value = getattr(model_args, name, None)
            if value is not None:
                setattr(self.config, name, value)
        adapter = getattr(model_args, 'pretrain_mm_mlp_adapter', None)
        ours = getattr(model_args, 'mm_projector_type',
                       None) in PLUGIN_PROJECTOR_TYPES
        if adapter and ours:
            model_args = copy.copy(model_args)
            model_args.pretrain_mm_mlp_adapter = None
        result = original(self, model_args, *args, **kwargs)
        if adapter and ours:
            from plugins.llava.projector_weights import load_projector_weights
            result = load_projector_weights(self.mm_projector, adapter,
                                            strict=True)
            # once, printed where PSALM prints its own "load mm_projector"
            print(f'load mm_projector {adapter} (strict): '
                  f'{len(result.loaded)} keys loaded, '
                  f'{len(result.missing)} missing, '
                  f'{len(result.unexpected)} unexpected', flush=True)
        return result

    setattr(initialize_vision_modules, _PATCHED, True)
    cls.initialize_vision_modules = initialize_vision_modules
    return True


def extend_model_arguments(model_args_cls):
    """A dataclass subclass of PSALM's ``ModelArguments`` with the
    deformable projector's arguments (fields PSALM already has are kept)."""
    if getattr(model_args_cls, _PATCHED, False):
        return model_args_cls
    existing = {f.name for f in dataclasses.fields(model_args_cls)}
    fields = [(name, typ, dataclasses.field(default=default))
              for name, typ, default in EXTRA_MODEL_ARGUMENTS
              if name not in existing]
    extended = dataclasses.make_dataclass(
        model_args_cls.__name__, fields, bases=(model_args_cls,))
    extended.__module__ = model_args_cls.__module__
    setattr(extended, _PATCHED, True)
    return extended


# -- everything ------------------------------------------------------------------
def _show_plugin_logs() -> None:
    """Print INFO records of the ``plugins`` loggers (the projector builder
    logs its type and ``n_levels/n_heads/n_points`` there); PSALM configures
    no logging, so they would otherwise be dropped."""
    plugins_logger = logging.getLogger('plugins')
    if plugins_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter('%(name)s: %(message)s'))
    plugins_logger.addHandler(handler)
    plugins_logger.setLevel(logging.INFO)
    plugins_logger.propagate = False


def _import_optional(name: str):
    try:
        return importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 -- re-raised, naming the module
        # Only a missing module of PSALM itself is optional; a missing
        # dependency (detectron2, ...) must surface.
        if isinstance(err, ImportError) and err.name and (
                err.name == name or name.startswith(err.name + '.')):
            return None
        hint = _pins_hint() if _about_transformers(err) else ''
        raise ImportError(f'{name} failed to import: {err}'
                          f'{_root_cause_note(err)}{hint}') from err


#: The transformers release PSALM pins (its pyproject.toml).
PSALM_TRANSFORMERS = '4.36.2'


def _root_cause(err: BaseException) -> BaseException:
    """The innermost exception of ``err``'s chain: transformers' lazy
    imports wrap a dependency's failure in ``RuntimeError('Failed to import
    transformers.X ...')`` (e.g. bitsandbytes 0.41 importing ``triton.ops``,
    which the triton of recent torch releases lacks)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or (None if err.__suppress_context__
                                else err.__context__)
        if nxt is None:
            break
        err = nxt
    return err


def _innermost_file(err: BaseException) -> str:
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    if last is None:
        return ''
    return f'{last.tb_frame.f_code.co_filename}:{last.tb_lineno}'


def _root_cause_note(err: BaseException) -> str:
    """``; root cause: ...`` naming where the innermost error was raised,
    when ``err`` wraps another one."""
    root = _root_cause(err)
    if root is err:
        return ''
    where = _innermost_file(root)
    return (f'; root cause: {type(root).__name__}: {root}'
            + (f' (raised in {where})' if where else ''))


def _about_transformers(err: BaseException) -> bool:
    """Whether an import failure comes from transformers, judged by its root
    cause (:func:`_root_cause`): a name or module missing from transformers
    (``cannot import name 'is_torch_tpu_available' from
    'transformers.utils'``), or an error raised inside transformers' code.
    Failures of other packages get no transformers hint, even when
    transformers' lazy import wraps them (a missing ``addict`` or
    ``triton.ops``, numpy 2 under deepspeed 0.9.5, a compiled op)."""
    root = _root_cause(err)
    name = getattr(root, 'name', None) or ''
    if isinstance(root, ImportError) and name:
        return name == 'transformers' or name.startswith('transformers.')
    if "'transformers" in str(root) or '"transformers' in str(root):
        return True
    where = _innermost_file(root).replace('\\', '/').split('/')
    return 'transformers' in where[:-1]


def _pins_hint() -> str:
    """Where the installed transformers is not PSALM's, say so: PSALM's own
    code (e.g. its trainer's ``is_torch_tpu_available`` import) needs it."""
    try:
        import transformers
    except ImportError:
        return ''
    if transformers.__version__ == PSALM_TRANSFORMERS:
        return ''
    return (f'; PSALM pins transformers=={PSALM_TRANSFORMERS}, this '
            f'environment has {transformers.__version__}: run PSALM in its '
            'own environment (docs/integrations/psalm.md)')


def apply(package: str = 'psalm', patch_train: bool = True) -> Dict[str, list]:
    """Apply every patch to PSALM (idempotent); return what was patched.

    Args:
        package: PSALM's top-level package name.
        patch_train: Also extend ``{package}.train.train.ModelArguments``.
    """
    try:
        importlib.import_module(package)
    except ImportError as err:
        raise ImportError(f'PSALM package {package!r} is not importable; run '
                          'from the PSALM checkout or put it on PYTHONPATH '
                          f'({err})') from err
    _show_plugin_logs()
    report: Dict[str, list] = dict(builder=[], encode_images=[],
                                   initialize_vision_modules=[],
                                   model_arguments=[])
    for pattern in MODEL_MODULES:
        _import_optional(pattern.format(package=package))
    train_module = None
    if patch_train:
        train_module = _import_optional(TRAIN_MODULE.format(package=package))
    report['builder'] = register_deformable_projector(package)
    for pattern in MODEL_MODULES:
        module = sys.modules.get(pattern.format(package=package))
        if module is None:
            continue
        for obj in list(vars(module).values()):
            if not isinstance(obj, type) or obj.__module__ != module.__name__:
                continue
            if patch_encode_images(obj):
                report['encode_images'].append(obj.__qualname__)
            if patch_initialize_vision_modules(obj):
                report['initialize_vision_modules'].append(obj.__qualname__)
    if train_module is not None and hasattr(train_module, 'ModelArguments'):
        extended = extend_model_arguments(train_module.ModelArguments)
        if extended is not train_module.ModelArguments:
            train_module.ModelArguments = extended
            report['model_arguments'].append(
                [name for name, _, _ in EXTRA_MODEL_ARGUMENTS])
    logger.info('PSALM patched for the deformable projector: %s', report)
    return report
