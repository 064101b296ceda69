"""PSALM's own environment: transformers 4.36.2 (PSALM's pin), built by
tools/setup_env.sh from requirements/psalm-pins.txt and linked as
./.venv-psalm. The PSALM drop-in tests and the plugins.llava /
plugins.layers tests run there, in a subprocess with this repository on
PYTHONPATH; the same files run in the main environment (4.57.x) as usual.
"""
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PSALM_VENV = REPO / '.venv-psalm'
PINS = REPO / 'requirements' / 'psalm-pins.txt'
#: Test files that must pass under PSALM's transformers too.
PSALM_ENV_TESTS = [
    'tests/test_llava/test_psalm_dropin.py',
    'tests/test_llava/test_psalm_projector_layout.py',
    'tests/test_llava/test_projector_builder.py',
    'tests/test_llava/test_adapt_pretrain.py',
    'tests/test_llava/test_model.py',
    'tests/test_llava/test_splice.py',
    'tests/test_llava/test_mask_head.py',
    'tests/test_layers',
]


def _pins():
    pins = {}
    for line in PINS.read_text().splitlines():
        line = line.split('#')[0].strip()
        if '==' in line:
            name, version = line.split('==')
            pins[name.strip()] = version.strip()
    return pins


def _python() -> str:
    python = PSALM_VENV / 'bin' / 'python'
    if not python.exists():
        pytest.fail(f'{python} is missing: run `make setup` (tools/'
                    'setup_env.sh builds PSALM\'s environment from '
                    f'{PINS.relative_to(REPO)} and links it as .venv-psalm)')
    return str(python)


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1')
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO)] + [p for p in [os.environ.get('PYTHONPATH')] if p])
    return env


def test_psalm_env_has_psalm_pins():
    code = ('import json, torch, transformers, tokenizers, plugins; '
            'print(json.dumps(dict(torch=torch.__version__, '
            'transformers=transformers.__version__, '
            'tokenizers=tokenizers.__version__, plugins=plugins.__file__)))')
    proc = subprocess.run([_python(), '-c', code], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    pins = _pins()
    assert got['transformers'] == pins['transformers'] == '4.36.2'
    assert got['tokenizers'] == pins['tokenizers']
    assert got['torch'].split('+')[0] == pins['torch']
    # This checkout's plugins, not an installed copy.
    assert Path(got['plugins']).resolve().is_relative_to(REPO)


def test_dropin_and_llava_pass_under_psalm_transformers():
    proc = subprocess.run(
        [_python(), '-m', 'pytest', '-p', 'no:cacheprovider', '-q', '-rs',
         *PSALM_ENV_TESTS], cwd=REPO, env=_env(), capture_output=True,
        text=True, timeout=1800)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    summary = proc.stdout.strip().splitlines()[-1]
    print(f'under {PSALM_VENV.name}: {summary}')
    assert re.search(r'\d+ passed', summary), tail
    assert 'skipped' not in summary and 'failed' not in summary, summary
