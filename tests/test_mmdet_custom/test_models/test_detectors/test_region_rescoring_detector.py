"""RegionRescoringDetector: re-scores / filters any detector's predictions."""
import pytest
import torch
from PIL import Image


@pytest.fixture(scope='module')
def mmdet_scope():
    import plugins.mmdet_custom  # noqa: F401
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)


@pytest.fixture(scope='module')
def stub_detector_type(mmdet_scope):
    from mmdet.models.detectors.base import BaseDetector
    from mmdet.registry import MODELS
    from mmengine.structures import InstanceData

    @MODELS.register_module(force=True)
    class _ScoringStubDetector(BaseDetector):
        """Predicts three fixed boxes with scores 0.9, 0.5, 0.01."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.w = torch.nn.Parameter(torch.zeros(1))

        def loss(self, inputs, samples):
            return dict(loss=self.w.sum())

        def _forward(self, inputs, samples=None):
            return inputs

        def extract_feat(self, inputs):
            return inputs

        def predict(self, inputs, samples, rescale=True):
            for s in samples:
                s.pred_instances = InstanceData(
                    bboxes=torch.tensor([[0., 0., 30.,
                                          20.], [10., 5., 60., 40.],
                                         [1., 1., 5., 5.]]),
                    scores=torch.tensor([0.9, 0.5, 0.01]),
                    labels=torch.tensor([0, 1, 2]))
            return samples

    return '_ScoringStubDetector'


def build(stub_detector_type, scorer, **kw):
    from mmdet.registry import MODELS
    return MODELS.build(
        dict(type='RegionRescoringDetector',
             detector=dict(type=stub_detector_type),
             scorer=scorer,
             **kw))


def samples(tmp_path, image):
    from mmdet.structures import DetDataSample
    path = tmp_path / 'img.png'
    Image.fromarray(image).save(path)
    return [DetDataSample(metainfo=dict(img_path=str(path)))]


def test_multiply_and_filter(tmp_path, image, tiny_clip, stub_detector_type):
    from plugins.scoring import RegionScorer
    model, preprocess, tokenizer = tiny_clip
    scorer = RegionScorer(model, tokenizer, preprocess, ['a cat'],
                          ['sky', 'grass'])
    det = build(stub_detector_type, scorer, score_thr=0.05)
    out = det.predict(torch.zeros(1, 3, 8, 8), samples(tmp_path, image))
    inst = out[0].pred_instances
    expected = [
        r['semantic_multiplier']
        for r in scorer.score(image, [[0, 0, 30, 20], [10, 5, 60, 40]])
    ]
    torch.testing.assert_close(inst.semantic_multipliers,
                               torch.tensor(expected + [1.0]))
    torch.testing.assert_close(inst.raw_scores, torch.tensor([0.9, 0.5, 0.01]))
    torch.testing.assert_close(
        inst.scores,
        torch.tensor([0.9, 0.5, 0.01]) * torch.tensor(expected + [1.0]))
    # filter mode keeps regions whose multiplier reaches the threshold
    thr = min(expected) + 1e-3
    det = build(stub_detector_type,
                scorer,
                mode='filter',
                min_multiplier=thr,
                score_thr=0.05)
    out = det.predict(torch.zeros(1, 3, 8, 8), samples(tmp_path, image))
    kept = [m for m in expected + [1.0] if m >= thr]
    torch.testing.assert_close(out[0].pred_instances.semantic_multipliers,
                               torch.tensor(kept))


def test_scorer_from_config_is_lazy_and_not_in_state_dict(
        tmp_path, image, stub_detector_type):
    det = build(
        stub_detector_type,
        dict(model='ViT-Tiny-16-test',
             positive_prompts=['a cat'],
             negative_prompts='background'))
    assert det._scorer is None
    assert list(det.state_dict()) == ['detector.w']
    # a bare detector checkpoint loads (keys moved under detector.)
    det.load_state_dict({'w': torch.ones(1)})
    assert det.detector.w.item() == 1.0
    out = det.predict(torch.zeros(1, 3, 8, 8), samples(tmp_path, image))
    assert det.scorer.head == 'softmax'
    assert len(out[0].pred_instances.semantic_multipliers) == 3
    assert det.loss(None, None)['loss'].item() == 1.0


def test_unknown_mode(stub_detector_type):
    with pytest.raises(ValueError, match="unknown mode 'drop'"):
        build(stub_detector_type, dict(), mode='drop')


def test_example_config_builds(mmdet_scope, repo_root):
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(
        repo_root / 'configs/region_scoring/'
        'dino-4scale_openclip-tiny_deformneck-s16-128_rescored-vitb32_toy.py')
    assert cfg.model.detector.type == 'DINO'
    det = MODELS.build(cfg.model)
    assert type(det).__name__ == 'RegionRescoringDetector'
    assert det.data_preprocessor is det.detector.data_preprocessor
    det.load_state_dict(det.detector.state_dict(), strict=True)
