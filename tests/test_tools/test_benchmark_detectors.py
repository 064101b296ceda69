"""The benchmark's summary: mean, spread and paired per-seed differences."""
import pytest

from tools.benchmark_detectors import NECKS, paired, section_text, summarize


def _row(neck, seed, map_s, t=1.0):
    return {'neck': neck, 'seed': seed, 'wall': 10.0, 'time': t,
            'coco/bbox_mAP': map_s, 'coco/bbox_mAP_s': map_s,
            'coco/bbox_mAP_50': 2 * map_s}


def test_summary_and_paired_differences():
    rows = [_row('16-128-deform', s, v) for s, v in enumerate((.1, .2, .3))]
    rows += [_row('8-64-deform', s, v, 3.0)
             for s, v in enumerate((.2, .1, .5))]
    stats = summarize(rows)
    mean, sd, lo, hi = stats['8-64-deform']['coco/bbox_mAP_s']
    assert (mean, lo, hi) == pytest.approx((0.8 / 3, 0.1, 0.5))
    assert sd == pytest.approx(0.2081666, rel=1e-5)
    assert stats['8-64-deform']['time'][0] == 3.0
    assert paired(rows, '8-64-deform', '16-128-deform') == pytest.approx(
        [0.1, -0.1, 0.2])

    class Args:
        data, min_size, max_size, iters, device = 'd', 256, 320, 80, 'cpu'
    text = section_text(rows, None, Args, 60.0)
    assert '2 of 3 seeds higher with 8-64' in text
    assert '| 8-64-deform | 8-64 | 1 deformable block |' in text


def test_the_four_necks():
    assert NECKS['8-64-plain'] == dict(out_strides=[8, 16, 32, 64],
                                       num_layers=0)
    assert NECKS['16-128-deform']['out_strides'] == [16, 32, 64, 128]
