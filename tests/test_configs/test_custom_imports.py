"""Registration: each config's ``custom_imports`` names the mmdet wing.

Every check runs in a fresh interpreter, as a user's process would: the
registries start empty and only the config's ``custom_imports`` fills them.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WING = 'plugins.mmdet_custom'
LEAVES = sorted(p for p in (ROOT / 'configs').rglob('*.py')
                if '_base_' not in p.parts)
DEMO = ROOT / 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'


def _run(code: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _last_json(proc: subprocess.CompletedProcess):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_shipped_config_names_the_wing():
    from mmengine.config import Config
    for path in LEAVES:
        cfg = Config.fromfile(str(path), import_custom_modules=False)
        assert cfg.custom_imports == dict(
            imports=[WING], allow_failed_imports=False), path


PROBED = f'''
import importlib.util, json, sys
importlib.util.find_spec('mmdet')  # a probe before anything imports mmdet
from mmengine.config import Config
from mmengine.registry import DefaultScope
paths = {[str(p) for p in LEAVES]!r}
found = {{}}
for path in paths:
    cfg = Config.fromfile(path)  # imports custom_imports
    from mmdet.registry import MODELS
    from mmengine.registry import RUNNERS
    with DefaultScope.overwrite_default_scope('mmdet'):
        backbone = cfg.model.get('backbone') or cfg.model.get(
            'detector', {{}}).get('backbone') or {{}}
        types = [cfg.model['type'], backbone.get('type')]
        found[path] = dict(
            model=[t for t in types if t and MODELS.get(t) is None],
            runner=RUNNERS.get(cfg.get('runner_type', 'Runner')) is not None)
print(json.dumps(found))
'''


def test_custom_imports_register_after_a_find_spec_probe():
    found = _last_json(_run(PROBED))
    assert len(found) == len(LEAVES) >= 35
    for path, got in found.items():
        assert got == dict(model=[], runner=True), (path, got)


RUNNER = f'''
import json
from mmengine.config import Config
from mmengine.registry import RUNNERS
cfg = Config.fromfile({str(DEMO)!r})
cfg.work_dir = {{work_dir!r}}
runner = RUNNERS.build(cfg)
print(json.dumps([type(runner).__module__, type(runner).__name__]))
'''


def test_plain_mmengine_builds_the_atomic_runner(tmp_path):
    """mmdet's tools/train.py does ``RUNNERS.build(cfg)`` when the config
    names a ``runner_type``; nothing but ``custom_imports`` registers it."""
    got = _last_json(_run(RUNNER.format(work_dir=str(tmp_path))))
    assert got == [
        'plugins.mmdet_custom.engine.runner.atomic_checkpoint_runner',
        'AtomicCheckpointRunner'
    ]


BROKEN = '''
import importlib.abc, json, sys
BROKEN = 'plugins.mmdet_custom.evaluation.iou_dice_metric'

class Broken(importlib.abc.MetaPathFinder):
    # a wing module whose own import raises (e.g. a broken dependency)
    def find_spec(self, name, path=None, target=None):
        if name == BROKEN:
            raise ERROR('a dependency of the wing is broken')

sys.meta_path.insert(0, Broken())
from mmengine.config import Config
errors = []
for _ in range(3):
    try:
        Config.fromfile(CONFIG)
        errors.append(None)
    except Exception as err:
        chain, e = [], err
        while e is not None:
            chain.append(type(e).__name__ + ': ' + str(e))
            e = e.__cause__ or e.__context__
        errors.append(chain)
from mmdet.registry import METRICS
print(json.dumps(dict(errors=errors,
                      registered=METRICS.get('IoUDiceMetric') is not None)))
'''


@pytest.mark.parametrize('error', ['RuntimeError', 'ImportError'])
def test_a_failing_wing_fails_the_config_every_time(error):
    code = BROKEN.replace('ERROR', error).replace('CONFIG', repr(str(DEMO)))
    got = _last_json(_run(code))
    assert len(got['errors']) == 3
    for chain in got['errors']:
        assert chain is not None, 'the config loaded with a broken wing'
        assert any(f'{error}: a dependency of the wing is broken' in link
                   for link in chain), chain
    assert got['errors'][0] == got['errors'][2]
    assert not got['registered']  # the broken module registered nothing


OLD_CONFIG = '''
custom_imports = dict(imports=['plugins'], allow_failed_imports={allow})
model = dict(type='SurgeryCLIPBackbone')
'''
LOAD = '''
import json, sys
from mmengine.config import Config
try:
    Config.fromfile(sys.argv[1])
    print(json.dumps(None))
except Exception as err:
    print(json.dumps([type(err).__name__, str(err)]))
'''


@pytest.mark.parametrize('allow', [False, True])
def test_a_config_naming_plugins_fails_naming_the_fix(tmp_path, allow):
    path = tmp_path / 'old_config.py'
    path.write_text(OLD_CONFIG.format(allow=allow))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, '-c', LOAD, str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=300)
    got = _last_json(proc)
    assert got is not None, 'a config naming plugins loaded'
    name, message = got
    assert name == 'WingNotNamedError'
    assert f"imports=['{WING}']" in message and 'registers nothing' in message


def test_importing_plugins_directly_still_works():
    got = _last_json(_run(
        'import json, sys, plugins, plugins.models; '
        "print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('mmdet', 'mmengine', 'mmcv'))))"))
    assert got == []  # and registers nothing, so imports no host


def test_the_wing_imports_nothing_from_plugins_init():
    """``plugins/__init__.py`` is no API of the wing: every ``from plugins
    import X`` in the wing names a subpackage."""
    packages = {p.name for p in (ROOT / 'plugins').iterdir()
                if (p / '__init__.py').is_file()}
    offenders = []
    for path in sorted((ROOT / 'plugins' / 'mmdet_custom').rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and \
                    node.module == 'plugins':
                offenders += [(str(path.relative_to(ROOT)), a.name)
                              for a in node.names if a.name not in packages]
            if isinstance(node, ast.Import):
                offenders += [(str(path.relative_to(ROOT)), a.name)
                              for a in node.names if a.name == 'plugins']
    assert not offenders, offenders
