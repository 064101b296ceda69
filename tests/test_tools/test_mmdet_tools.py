"""Drop-in proof: mmdet's *own* train/test scripts (shipped inside the mmdet
package) run our demo config unchanged, through its `custom_imports`, and
our tools/test.py --show-dir draws one picture per test image."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = 'configs/_demo_/dino-4scale_surgeryclip-tiny_deformneck-s16-128_toy.py'


def _mmdet_tool(name: str) -> Path:
    import mmdet
    path = Path(mmdet.__file__).parent / '.mim' / 'tools' / f'{name}.py'
    assert path.is_file(), f'mmdet ships no {path}'
    return path


def _data_options(data_root: Path) -> list:
    """Point the demo at the test's own toy data, 2 iterations, 2 images."""
    ann = f'{data_root}/annotations/instances_train.json'
    options = ['train_cfg.max_iters=2', 'train_cfg.val_interval=3',
               'default_hooks.checkpoint.interval=2',
               'default_hooks.logger.interval=1',
               f'test_evaluator.ann_file={ann}', f'val_evaluator.ann_file={ann}']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={data_root}/',
                    f'{loader}.dataset.ann_file=annotations/instances_train.json',
                    f'{loader}.dataset.data_prefix.img=images/train/',
                    f'{loader}.dataset.indices=2']
    return options


def _run(repo_root: Path, cmd: list) -> str:
    result = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True,
                            timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_mmdet_own_tools_run_the_demo_config(repo_root, toy_data_root,
                                             tmp_path):
    options = _data_options(toy_data_root)
    work_dir = tmp_path / 'work'
    _run(repo_root, [sys.executable, str(_mmdet_tool('train')), CONFIG,
                     '--work-dir', str(work_dir), '--cfg-options', *options])
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.is_file()

    out = _run(repo_root, [sys.executable, str(_mmdet_tool('test')), CONFIG,
                           str(checkpoint), '--work-dir', str(tmp_path / 'mm'),
                           '--show-dir', 'vis', '--cfg-options', *options])
    assert 'coco/bbox_mAP' in out
    assert len(list((tmp_path / 'mm').rglob('vis/*.png'))) == 2

    # Ours: same command line, one drawn picture per test image.
    out = _run(repo_root, [sys.executable, 'tools/test.py', CONFIG,
                           str(checkpoint), '--work-dir', str(tmp_path / 'ours'),
                           '--show-dir', 'vis', '--cfg-options', *options])
    assert 'coco/bbox_mAP' in out
    pictures = sorted(p.name for p in (tmp_path / 'ours').rglob('vis/*.png'))
    assert pictures == _first_images(toy_data_root, 2)


def _first_images(data_root: Path, count: int) -> list:
    ann = json.loads((data_root / 'annotations' / 'instances_train.json')
                     .read_text())
    return sorted(image['file_name'] for image in ann['images'][:count])
