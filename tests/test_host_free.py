"""The house rule: only the mmdet wing (``plugins/mmdet_custom``) imports
mmdet, mmcv or mmengine; the core runs where they are absent, and a core
import never pulls them in where they are installed."""
import ast
import subprocess
import sys
from pathlib import Path

HOSTS = ('mmdet', 'mmcv', 'mmengine')
WING = 'mmdet_custom'
CORE_PACKAGES = ('ops', 'utils', 'layers', 'models', 'llava', 'scoring',
                 'prompt_learning')


def _imported_names(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module or ''


def test_no_core_file_imports_a_host(repo_root):
    """One grep, as an AST walk: every ``plugins/**.py`` outside the wing."""
    files = [p for p in sorted((repo_root / 'plugins').rglob('*.py'))
             if WING not in p.relative_to(repo_root / 'plugins').parts]
    assert len(files) > 50, len(files)
    offenders = [(str(p.relative_to(repo_root)), name) for p in files
                 for name in _imported_names(p)
                 if name.split('.')[0] in HOSTS]
    assert not offenders, offenders


def test_every_core_package_has_files(repo_root):
    for name in CORE_PACKAGES:
        assert (repo_root / 'plugins' / name / '__init__.py').is_file(), name


def _run(code: str, repo_root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', code], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)


BLOCKED = f'''
import importlib, sys
for name in {HOSTS!r}:
    sys.modules[name] = None  # as if not installed: any import raises
for name in {CORE_PACKAGES!r}:
    importlib.import_module('plugins.' + name)
import plugins.llava.projector_builder, plugins.scoring.region_scorer
'''


def test_core_imports_with_hosts_blocked(repo_root):
    result = _run(BLOCKED, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]


INSTALLED = f'''
import importlib, sys
for name in {CORE_PACKAGES!r}:
    importlib.import_module('plugins.' + name)
loaded = sorted(m for m in sys.modules if m.split('.')[0] in {HOSTS!r})
assert not loaded, loaded
'''


def test_core_import_does_not_pull_in_installed_hosts(repo_root):
    """mmdet is installed here: importing the core must still not load it."""
    result = _run(INSTALLED, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]


NO_SIDE_EFFECTS = '''
import plugins, sys
assert 'mmdet' not in sys.modules
from mmdet.registry import MODELS
assert 'plugins.mmdet_custom' not in sys.modules  # importing plugins: nothing
assert MODELS.get('SurgeryCLIPBackbone') is None
import plugins.mmdet_custom  # what custom_imports names
from mmdet.registry import HOOKS
for name in ('SurgeryCLIPBackbone', 'DeformableCrossAttentionNeck',
             'MSDeformAttention', 'RegionRescoringDetector',
             'VPTTPTSemanticSegmentor'):
    assert MODELS.get(name) is not None, name
assert HOOKS.get('MSDeformAttentionHook') is not None
'''


def test_importing_plugins_registers_nothing_the_wing_everything(repo_root):
    """``import plugins`` has no side effect; ``plugins.mmdet_custom``
    (the configs' ``custom_imports``) registers every class."""
    result = _run(NO_SIDE_EFFECTS, repo_root)
    assert result.returncode == 0, result.stderr[-3000:]
