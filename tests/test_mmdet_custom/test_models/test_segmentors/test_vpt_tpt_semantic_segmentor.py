"""The registered mmengine wrapper: losses, predictions, pictures, training."""
import json
import os.path as osp

import pytest
import torch
from mmengine.structures import PixelData

from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from plugins.mmdet_custom.engine.hooks import SemSegVisualizationHook

CLASSES = ('background', 'circle', 'square', 'triangle')


def batch(sizes=((64, 64), (64, 64))):
    torch.manual_seed(1)
    inputs, samples = [], []
    for h, w in sizes:
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8))
        s = DetDataSample(metainfo=dict(img_shape=(h, w), img_id=f'{h}x{w}'))
        mask = torch.zeros(1, h, w, dtype=torch.long)
        mask[:, h // 4:h // 2, w // 4:w // 2] = 1
        mask[:, :2] = 255  # ignored rows
        s.gt_sem_seg = PixelData(sem_seg=mask)
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def test_loss_trains_only_prompts(tiny_model):
    tiny_model.zero_grad()
    data = tiny_model.data_preprocessor(batch(), True)
    assert data['inputs'].shape == (2, 3, 64, 64)  # stacked, RGB
    losses = tiny_model(**data, mode='loss')
    assert set(losses) == {'loss_ce', 'loss_dice'}
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in tiny_model.named_parameters()
             if p.grad is not None}
    assert set(grads) == {'segmentor.visual_prompt_learner.prompts',
                          'segmentor.text_prompt_learner.context'}
    assert all(g.abs().sum() > 0 for g in grads.values())


def test_masks_of_different_sizes_and_consistency(tiny_model):
    model = MODELS.build(dict(
        type='VPTTPTSemanticSegmentor', class_names=CLASSES,
        prompt_texts=('plain background', 'circle', 'square', 'triangle'),
        segmentor=dict(model_name='BiomedCLIP-Tiny-test'),
        loss_weights=dict(consistency=0.5), temperature=20.0,
        class_weight=[0.5, 1, 1, 1]))
    data = model.data_preprocessor(batch(((64, 64), (48, 80))), True)
    assert isinstance(data['inputs'], list)  # not padded
    losses = model(**data, mode='loss')
    assert set(losses) == {'loss_ce', 'loss_dice', 'loss_consistency'}
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(KeyError, match='unknown'):
        MODELS.build(dict(type='VPTTPTSemanticSegmentor', class_names=CLASSES,
                          loss_weights=dict(focal=1.0)))


@torch.no_grad()
def test_predict_and_pictures(tiny_model, tmp_path):
    data = tiny_model.data_preprocessor(batch(((64, 64), (48, 80))), False)
    samples = tiny_model(**data, mode='predict')
    for s, (h, w) in zip(samples, ((64, 64), (48, 80))):
        assert s.pred_sem_seg.sem_seg.shape == (1, h, w)
        assert s.pred_sem_seg.sem_seg.max() < len(CLASSES)
        assert s.seg_logits.data.shape == (4, 10, 10)  # tiny: 160 px / 16
    maps = tiny_model(**data, mode='tensor')
    assert maps.shape == (2, 4, 10, 10)

    hook = SemSegVisualizationHook(draw=True)
    raw = batch(((64, 64), (48, 80)))
    paths = hook.write(samples[1], hook._image(raw['inputs'][1]),
                       str(tmp_path))
    assert [osp.basename(p) for p in paths] == ['48x80_overlay.png',
                                                '48x80_heatmaps.png']
    from PIL import Image
    overlay = Image.open(paths[0])
    assert overlay.size == (3 * 80 + 2 * 2, 48)  # image | gt | prediction
    assert Image.open(paths[1]).size == (4 * 80 + 3 * 2, 48)


def read_scalars(work_dir):
    logs = sorted(__import__('glob').glob(
        osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    with open(logs[-1]) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_demo_config_trains_and_miou_rises(demo_cfg):
    """tools/train.py's runner on the toy masks: mIoU before vs after."""
    from mmengine.runner import Runner

    demo_cfg.train_cfg.max_iters = 30
    demo_cfg.train_cfg.val_interval = 30
    demo_cfg.param_scheduler = []
    demo_cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                             interval=30, by_epoch=False)
    demo_cfg.pop('runner_type', None)
    runner = Runner.from_cfg(demo_cfg)
    before = runner.val()['semseg/mIoU']
    runner.train()
    after = [r for r in read_scalars(demo_cfg.work_dir)
             if 'semseg/mIoU' in r][-1]['semseg/mIoU']
    print(f'toy mIoU before {before:.4f}, after 30 iterations {after:.4f}')
    assert after > before + 0.05


@pytest.mark.slow
def test_train_and_test_tools_run_the_demo(demo_cfg, repo_root, tmp_path):
    """tools/train.py then tools/test.py --show-dir on the demo config."""
    import sys
    sys.path.insert(0, str(repo_root))
    from tools import test as test_tool
    from tools import train as train_tool

    cfg_path = tmp_path / 'demo.py'
    demo_cfg.train_cfg.max_iters = 2
    demo_cfg.train_cfg.val_interval = 2
    demo_cfg.default_hooks.checkpoint = dict(type='CheckpointHook',
                                             interval=2, by_epoch=False)
    demo_cfg.dump(str(cfg_path))
    work = str(tmp_path / 'work')
    train_tool.main([str(cfg_path), '--work-dir', work])
    ckpt = osp.join(work, 'iter_2.pth')
    assert osp.isfile(ckpt)
    test_tool.main([str(cfg_path), ckpt, '--work-dir', work,
                    '--show-dir', 'vis'])
    pngs = sorted(__import__('glob').glob(osp.join(work, '*', 'vis',
                                                   '*.png')))
    assert len(pngs) == 8  # 4 val images x (overlay, heatmaps)
