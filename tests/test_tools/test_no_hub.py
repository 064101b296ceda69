"""No model hub: importing plugins puts the Hugging Face libraries offline
(unless the user opted in), a missing local BERT folder fails at once naming
the config key and path, and region scoring needs real weights (or an
explicit --random-weights)."""
import json
import os
import subprocess
import sys
import time

import pytest

HF_VARS = ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HF_DATASETS_OFFLINE',
           'PLUGINS_ALLOW_HUB')
SHOW = ('import json, os, sys; {pre}import plugins; '
        'print(json.dumps({{k: os.environ.get(k) for k in {names!r}}} | '
        'dict(allowed=plugins.hub_allowed(), hub={hub})))')


def _run(repo_root, env_extra, pre='', hub='None'):
    env = {k: v for k, v in os.environ.items() if k not in HF_VARS}
    env.update(env_extra)
    env['PYTHONPATH'] = str(repo_root)
    code = SHOW.format(pre=pre, names=HF_VARS[:3], hub=hub)
    proc = subprocess.run([sys.executable, '-c', code], cwd=repo_root,
                          env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_puts_hub_offline(repo_root):
    # huggingface_hub imported first: its constant is corrected too.
    got = _run(repo_root, {}, pre='import huggingface_hub.constants as c; ',
               hub='c.HF_HUB_OFFLINE')
    assert got == dict(HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1',
                       HF_DATASETS_OFFLINE='1', allowed=False, hub=True)


@pytest.mark.parametrize('opt_in', [dict(HF_HUB_OFFLINE='0'),
                                    dict(PLUGINS_ALLOW_HUB='1')])
def test_user_opt_in_is_respected(repo_root, opt_in):
    got = _run(repo_root, opt_in)
    assert got['allowed'] is True
    assert got['TRANSFORMERS_OFFLINE'] is None
    assert got['HF_HUB_OFFLINE'] == opt_in.get('HF_HUB_OFFLINE')


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
