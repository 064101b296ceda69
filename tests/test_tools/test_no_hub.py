"""No model hub, by our own arguments: importing plugins changes no
environment variable (a user's own hub downloads in the same script keep
working), a missing local BERT folder fails at once naming the config key
and path, and region scoring needs real weights (or an explicit
--random-weights)."""
import json
import os
import subprocess
import sys
import time

import pytest

HF_VARS = ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_DATASETS_OFFLINE')
IMPORTS = ('plugins', 'plugins.models', 'plugins.scoring',
           'plugins.prompt_learning', 'plugins.llava', 'plugins.mmdet_custom')
#: Libraries with environment side effects of their own (open_clip sets
#: TOKENIZERS_PARALLELISM, cv2 its Qt paths, torch/mmengine CUDA settings):
#: imported first, so that what is measured is our imports alone.
HOSTS = ('open_clip, timm, transformers, mmdet.models, mmdet.datasets, '
         'mmdet.evaluation, mmdet.engine, mmengine.runner, mmcv.ops')
SHOW = '''
import importlib, json, os
{pre}
import huggingface_hub.constants as c
hub = c.HF_HUB_OFFLINE
changed = {{}}
for module in {modules!r}:
    before = dict(os.environ)
    importlib.import_module(module)
    after = dict(os.environ)
    changed[module] = sorted(k for k in before.keys() | after.keys()
                             if before.get(k) != after.get(k))
print(json.dumps(dict(changed=changed, hub=[hub, c.HF_HUB_OFFLINE])))
'''


@pytest.mark.parametrize('first', [True, False],
                         ids=['plugins-first', 'after-third-party'])
def test_imports_leave_the_environment_unchanged(repo_root, first):
    """In a fresh interpreter: ``import plugins`` with nothing imported
    before it; every package of ours after the third-party libraries."""
    modules = IMPORTS[:1] if first else IMPORTS
    pre = '' if first else f'import {HOSTS}'
    env = {k: v for k, v in os.environ.items()
           if k not in HF_VARS + ('TOKENIZERS_PARALLELISM', )}
    env['PYTHONPATH'] = str(repo_root)
    proc = subprocess.run(
        [sys.executable, '-c', SHOW.format(pre=pre, modules=modules)],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == dict(changed={m: [] for m in modules},
                       hub=[False, False]), got


def test_missing_bert_folder_fails_at_once(repo_root, tmp_path):
    missing = tmp_path / 'no_such_bert'
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, 'tools/train.py',
         'configs/_demo_/grounding_dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py',
         '--work-dir', str(tmp_path / 'w'), '--cfg-options',
         f'model.language_model.name={missing}'],
        cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert 'model.language_model.name' in proc.stderr
    assert 'lang_model_name' in proc.stderr and str(missing) in proc.stderr
    assert 'is not a local folder' in proc.stderr
    # Refused by the config check, before the model is built (so before
    # transformers' from_pretrained could retry the hub).
    assert 'in check_local_model_folders' in proc.stderr
    assert 'from_pretrained' not in proc.stderr
    print(f'refused in {elapsed:.1f}s')


def test_hf_folder_check_names_a_folder_without_config(tmp_path):
    from mmengine.config import Config

    from plugins.mmdet_custom.engine.runner.cli import check_local_model_folders
    cfg = Config(dict(model=dict(type='GroundingDINO', language_model=dict(
        type='BertModel', name=str(tmp_path)))))
    with pytest.raises(FileNotFoundError,
                       match=r'model\.language_model\.name .* has no '
                       r'config\.json'):
        check_local_model_folders(cfg)
    (tmp_path / 'config.json').write_text('{}')
    check_local_model_folders(cfg)  # a folder with config.json passes


def test_score_regions_requires_weights(repo_root, capsys):
    sys.path.insert(0, str(repo_root))
    from tools.score_regions import parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args(['img.png', '--regions', 'r.json'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert '--weights PATH is required' in err and '--random-weights' in err
    with pytest.raises(SystemExit):
        parse_args(['img.png', '--weights', 'w.safetensors',
                    '--random-weights'])
    assert parse_args(['img.png', '--random-weights']).random_weights
