"""plugins.scoring is host-free: none of its modules imports mmdet/mmcv/
mmengine (the mmdet adapter lives in plugins.scoring_mmdet)."""
import ast
from pathlib import Path

HOSTS = ('mmdet', 'mmcv', 'mmengine')


def test_scoring_imports_no_host(repo_root):
    files = sorted((repo_root / 'plugins' / 'scoring').glob('*.py'))
    assert files
    for path in files:
        for node in ast.walk(ast.parse(Path(path).read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or '']
            else:
                continue
            for name in names:
                assert name.split('.')[0] not in HOSTS, (path.name, name)
