"""The PSALM drop-in (third_party/psalm) against a fake PSALM package.

Runs in the main environment (transformers 4.57.x) and, through
test_psalm_env.py, in PSALM's own (transformers 4.36.2). PSALM's training
module imports ``transformers.utils.is_torch_tpu_available``, which only
PSALM's transformers has: there the train entry is tested, in the main
environment the drop-in's error saying so.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import transformers.utils

HERE = Path(__file__).resolve().parent
FAKE_ROOT = HERE / 'fake_psalm'
REPO = HERE.parents[1]
DROPIN = REPO / 'third_party' / 'psalm'
#: PSALM's trainer imports this; transformers 4.36.2 has it, 4.57 not.
PSALM_TRAIN_IMPORTS = hasattr(transformers.utils, 'is_torch_tpu_available')


def _load_dropin():
    spec = importlib.util.spec_from_file_location(
        'psalm_deformable', DROPIN / 'psalm_deformable.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _forget_psalm():
    for name in [n for n in sys.modules if n == 'psalm'
                 or n.startswith('psalm.')]:
        del sys.modules[name]


@pytest.fixture
def dropin():
    return _load_dropin()


@pytest.fixture
def fake_psalm():
    """Import the fake PSALM fresh (patches must not leak between tests)."""
    import logging
    plugins_logger = logging.getLogger('plugins')
    saved = (list(plugins_logger.handlers), plugins_logger.level,
             plugins_logger.propagate)
    _forget_psalm()
    sys.path.insert(0, str(FAKE_ROOT))
    try:
        yield
    finally:
        sys.path.remove(str(FAKE_ROOT))
        _forget_psalm()
        plugins_logger.handlers[:] = saved[0]
        plugins_logger.setLevel(saved[1])
        plugins_logger.propagate = saved[2]


def _model_args(**kw):
    base = dict(mm_projector_type='deformable', swin_type='base',
                with_norm=True, with_layernorm=False,  # PSALM's defaults
                projector_outdim=64, pretrain_mm_mlp_adapter=None,
                mm_hidden_dim=64, mm_n_heads=8, mm_n_points=4,
                mm_num_tokens=16)
    base.update(kw)
    return SimpleNamespace(**base)


def _apply(dropin):
    """Every patch PSALM's installed transformers allows (see module doc)."""
    return dropin.apply(patch_train=PSALM_TRAIN_IMPORTS)


def _psalm_model(hidden=64):
    from psalm.model.language_model.llava_phi import PSALM
    return PSALM(SimpleNamespace(hidden_size=hidden))


def test_imports_without_psalm(dropin):
    _forget_psalm()
    assert 'psalm' not in sys.modules
    with pytest.raises(ImportError, match='PYTHONPATH'):
        dropin.apply()


def test_apply_reports_every_patch(dropin, fake_psalm):
    report = _apply(dropin)
    assert set(report['builder']) == {
        'psalm.model.multimodal_projector.builder', 'psalm.model.llava_arch',
        'psalm.model.language_model.llava_phi'}
    assert set(report['encode_images']) == {'LlavaMetaForCausalLM', 'PSALM'}
    assert report['initialize_vision_modules'] == ['PSALMModel']
    assert bool(report['model_arguments']) == PSALM_TRAIN_IMPORTS
    # Idempotent: nothing is wrapped twice.
    again = _apply(dropin)
    assert again['encode_images'] == [] and again['model_arguments'] == []
    from psalm.model.language_model import llava_phi
    assert llava_phi.build_vision_projector.psalm_original.__module__ == \
        'psalm.model.multimodal_projector.builder'


def test_train_module_needs_psalm_transformers(dropin, fake_psalm):
    if PSALM_TRAIN_IMPORTS:
        assert dropin.apply()['model_arguments']
    else:
        with pytest.raises(ImportError, match=r'is_torch_tpu_available.*'
                           r'PSALM pins transformers==4\.36\.2'):
            dropin.apply()


#: The hint the drop-in adds to import failures caused by transformers.
PIN_HINT = 'PSALM pins transformers==4.36.2'
#: A module body failing the way transformers' lazy imports fail.
LAZY_WRAP = ('try:\n    {stmt}\nexcept ImportError as e:\n'
             '    raise RuntimeError("Failed to import transformers.generation'
             '.utils because of the following error: " + str(e)) from e')


@pytest.mark.parametrize('body,about_transformers', [
    ('import addict_is_not_installed_here  # PSALM needs addict', False),
    ('raise OSError("libmsda.so: cannot open shared object file")', False),
    ('from transformers.utils import no_such_helper_in_transformers', True),
    # transformers' lazy import wraps a dependency's failure in a
    # RuntimeError (seen in a real PSALM environment: bitsandbytes 0.41
    # importing triton.ops, absent from recent triton): judged by the cause
    (LAZY_WRAP.format(stmt='import triton_ops_is_not_here'), False),
    (LAZY_WRAP.format(
        stmt='from transformers.utils import no_such_helper_here'), True),
])
def test_pins_hint_only_for_transformers_failures(dropin, tmp_path,
                                                  monkeypatch, body,
                                                  about_transformers):
    """A PSALM module failing to import: the drop-in names it, and adds
    PSALM's transformers pin only when transformers is the cause."""
    pkg = tmp_path / 'psalmx' / 'model'
    pkg.mkdir(parents=True)
    (tmp_path / 'psalmx' / '__init__.py').write_text('')
    (pkg / '__init__.py').write_text('')
    (pkg / 'llava_arch.py').write_text(body + '\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(Exception) as info:
        dropin._import_optional('psalmx.model.llava_arch')
    message = str(info.value)
    wants_hint = about_transformers and not PSALM_TRAIN_IMPORTS
    assert (PIN_HINT in message) == wants_hint, message
    assert isinstance(info.value, ImportError), info.value
    assert 'psalmx.model.llava_arch failed to import' in message
    if body.startswith('try:'):
        assert 'root cause: ' in message and 'llava_arch.py:' in message
    for name in [n for n in sys.modules if n.startswith('psalmx')]:
        del sys.modules[name]


def test_strict_load_line_is_printed_once(dropin, fake_psalm, tmp_path,
                                          capsys):
    _apply(dropin)
    source = _psalm_model()
    source.get_model().initialize_vision_modules(_model_args())
    path = tmp_path / 'mm_projector.bin'
    torch.save({f'model.mm_projector.{k}': v for k, v in
                source.get_model().mm_projector.state_dict().items()}, path)
    capsys.readouterr()
    _psalm_model().get_model().initialize_vision_modules(
        _model_args(pretrain_mm_mlp_adapter=str(path)))
    captured = capsys.readouterr()
    both = captured.out + captured.err
    line = f'load mm_projector {path} (strict)'
    assert both.count(line) == 1, both
    assert line in captured.out and '0 missing, 0 unexpected' in captured.out


def test_builder_routes_deformable_and_keeps_psalm_types(dropin, fake_psalm):
    _apply(dropin)
    from psalm.model.language_model import llava_phi
    cfg = SimpleNamespace(mm_projector_type='deformable', swin_type='base',
                          projector_outdim=64, mm_hidden_dim=64, mm_n_heads=8,
                          mm_n_points=4, mm_num_tokens=16)
    projector = llava_phi.build_vision_projector(cfg)
    assert type(projector).__name__ == \
        'MultiScaleDeformableCrossAttentionAlignment'
    psalm_type = llava_phi.build_vision_projector(SimpleNamespace(
        mm_projector_type='swin_conv', mm_input_embeds=1024,
        projector_outdim=64))
    assert type(psalm_type).__name__ == 'ResNetSwinStandIn'
    with pytest.raises(ValueError, match='Unknown projector type'):
        llava_phi.build_vision_projector(
            SimpleNamespace(mm_projector_type='nope'))


def _record_inputs(module):
    seen = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    return seen


def test_projector_lines_are_printed(dropin, fake_psalm, capsys):
    import logging
    logging.getLogger('plugins').handlers.clear()  # restored by the fixture
    _apply(dropin)
    model = _psalm_model()
    model.get_model().initialize_vision_modules(_model_args())
    err = capsys.readouterr().err
    assert 'mm_projector type: MultiScaleDeformableCrossAttentionAlignment' \
        in err
    assert 'n_levels=4, n_heads=8, n_points=4' in err


def test_encode_images_passes_all_four_maps(dropin, fake_psalm):
    _apply(dropin)
    model = _psalm_model()
    model.get_model().initialize_vision_modules(_model_args())
    # The projector arguments reached the config the builder read.
    assert model.config.mm_n_points == 4 and model.config.mm_hidden_dim == 64
    seen = _record_inputs(model.get_model().mm_projector)
    tokens = model.encode_images(torch.randn(2, 3, 128, 128))
    assert isinstance(seen[0], list) and len(seen[0]) == 4
    assert [m.shape[1] for m in seen[0]] == [128, 256, 512, 1024]
    assert tokens.shape == (2, 16, 64)


def test_encode_images_keeps_last_map_for_psalm_types(dropin, fake_psalm):
    _apply(dropin)
    model = _psalm_model()
    model.get_model().initialize_vision_modules(
        _model_args(mm_projector_type='swin_conv'))
    seen = _record_inputs(model.get_model().mm_projector)
    tokens = model.encode_images(torch.randn(1, 3, 128, 128))
    assert torch.is_tensor(seen[0]) and seen[0].shape == (1, 1024, 4, 4)
    assert tokens.shape == (1, 4, 64)


def test_adapter_loads_strictly(dropin, fake_psalm, tmp_path):
    _apply(dropin)
    source = _psalm_model()
    source.get_model().initialize_vision_modules(_model_args())
    state = {f'model.mm_projector.{k}': v.clone() for k, v in
             source.get_model().mm_projector.state_dict().items()}
    good = tmp_path / 'mm_projector.bin'
    torch.save(state, good)
    model = _psalm_model()
    model.get_model().initialize_vision_modules(
        _model_args(pretrain_mm_mlp_adapter=str(good)))
    loaded = model.get_model().mm_projector.state_dict()
    for key, value in state.items():
        assert torch.equal(loaded[key[len('model.mm_projector.'):]], value)
    # A file whose names do not match fails loudly (PSALM: silent no-op).
    bad = tmp_path / 'bad.bin'
    torch.save({f'model.mm_projector.renamed.{k}': v
                for k, v in source.get_model().mm_projector.state_dict()
                .items()}, bad)
    with pytest.raises(Exception, match=r'(?i)key|match|load'):
        _psalm_model().get_model().initialize_vision_modules(
            _model_args(pretrain_mm_mlp_adapter=str(bad)))


def test_model_arguments_gain_projector_fields(dropin, fake_psalm):
    if not PSALM_TRAIN_IMPORTS:
        with pytest.raises(ImportError, match='is_torch_tpu_available'):
            import psalm.train.train  # noqa: F401  (PSALM's own import)
        return
    dropin.apply()
    import dataclasses

    from psalm.train import train as psalm_train
    names = {f.name for f in dataclasses.fields(psalm_train.ModelArguments)}
    assert {'mm_hidden_dim', 'mm_n_heads', 'mm_n_points',
            'mm_num_tokens'} <= names
    assert psalm_train.ModelArguments().mm_n_heads == 8


def test_run_psalm_train_entry(tmp_path):
    """``run_psalm.py train`` parses the new arguments through PSALM's own
    HfArgumentParser (as under the deepspeed launcher); outside PSALM's
    transformers it stops, saying which version PSALM needs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(REPO), os.environ.get('PYTHONPATH', '')]))
    proc = subprocess.run(
        [sys.executable, str(DROPIN / 'run_psalm.py'), 'train',
         '--mm_projector_type', 'deformable', '--mm_n_points', '8',
         '--mm_hidden_dim', '512', '--local_rank=0'],
        cwd=FAKE_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if not PSALM_TRAIN_IMPORTS:
        assert proc.returncode != 0
        assert 'PSALM pins transformers==4.36.2' in proc.stderr
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines()
                if l.startswith('MODEL_ARGS '))
    args = json.loads(line[len('MODEL_ARGS '):])
    assert args['mm_projector_type'] == 'deformable'
    assert args['mm_n_points'] == 8 and args['mm_hidden_dim'] == 512
    assert args['mm_n_heads'] == 8


def test_psalm_swin_conv_weights_run_in_plugins_builder(fake_psalm):
    """A PSALM ``swin_conv`` (the fake, built from PSALM's facts) loads
    strictly into ``plugins.llava.build_vision_projector`` and gives the
    same tokens: the builder is a drop-in for PSALM's."""
    from psalm.model.multimodal_projector.builder import \
        build_vision_projector as psalm_build

    from plugins.llava import build_vision_projector
    cfg = SimpleNamespace(mm_projector_type='swin_conv', mm_input_embeds=16,
                          projector_outdim=8)
    torch.manual_seed(0)
    psalm = psalm_build(cfg)
    with torch.no_grad():
        for buf in psalm.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    ours = build_vision_projector(cfg)
    ours.load_state_dict(psalm.state_dict(), strict=True)
    x = torch.randn(2, 16, 8, 8)
    torch.testing.assert_close(ours.eval()(x), psalm.eval()(x))


def test_psalm_adapter_file_through_tool_into_deformable(dropin, fake_psalm,
                                                         tmp_path):
    """PSALM's mm_projector.bin of a swin_conv run (named_parameters of the
    model, ``model.mm_projector.`` prefix) -> the adapter tool -> loaded
    strictly by the patched initialize_vision_modules."""
    _apply(dropin)
    from psalm.model.language_model.llava_phi import PSALM

    from tools.adapt_pretrain_to_deformable import main as adapt_main
    torch.manual_seed(0)
    baseline = PSALM(SimpleNamespace(hidden_size=64))
    baseline.get_model().initialize_vision_modules(
        _model_args(mm_projector_type='swin_conv'))
    source = {f'model.{k}': v.detach() for k, v in
              baseline.get_model().named_parameters() if 'mm_projector' in k}
    src, out = tmp_path / 'mm_projector.bin', tmp_path / 'deformable.bin'
    torch.save(source, src)
    assert adapt_main([str(src), str(out), '--projector-outdim', '64',
                       '--mm-hidden-dim', '64', '--mm-num-tokens', '16']) == 0
    model = _psalm_model()
    model.get_model().initialize_vision_modules(
        _model_args(pretrain_mm_mlp_adapter=str(out)))
    torch.testing.assert_close(
        model.get_model().mm_projector.output_proj[2].weight,
        baseline.get_model().mm_projector.fc.weight)
    tokens = model.encode_images(torch.randn(1, 3, 128, 128))
    assert tokens.shape == (1, 16, 64)
