"""compare_detections: the one agreement check of exported programs with
eager PyTorch (issue 24): near-tied scores may swap, nothing else may."""
import numpy as np
import torch

from plugins.mmdet_custom.apis.export import (BOX_TOL, SCORE_TOL,
                                              compare_detections)


def _dets(K=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(1, K, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 10 + torch.rand(1, K, 2, generator=g) * 50],
                      -1)
    scores = torch.linspace(0.9, 0.4, K).view(1, K)
    labels = torch.arange(K).view(1, K) % 3
    return boxes, scores, labels


def _copy(dets):
    return [t.clone() for t in dets]


def test_identical_and_within_tolerance():
    want = _dets()
    got = _copy(want)
    got[0] += BOX_TOL * 0.9
    got[1] -= SCORE_TOL * 0.9
    report = compare_detections([t.numpy() for t in got], want)
    assert report['ok'], report
    assert report['matched'] == 6 and report['moved'] == 0
    assert report['max_box_px'] <= BOX_TOL and report['max_score'] <= SCORE_TOL


def test_near_tied_detections_may_swap():
    want = _dets()
    want[1][0, 2] = want[1][0, 1] - SCORE_TOL / 2  # #1 and #2 near-tied
    got = _copy(want)
    for t in got:
        t[0, [1, 2]] = t[0, [2, 1]]
    report = compare_detections(got, want)
    assert report['ok'], report
    assert report['moved'] == 2 and report['labels_equal_by_position'] == 4


def test_a_swap_of_distinct_scores_fails():
    want = _dets()
    got = _copy(want)
    for t in got:
        t[0, [1, 2]] = t[0, [2, 1]]
    report = compare_detections(got, want)
    assert not report['ok'] and 'position 1' in report['problems'][0]


def test_a_box_off_by_more_than_the_tolerance_fails():
    want = _dets()
    got = _copy(want)
    got[0][0, 3, 2] += 2 * BOX_TOL
    report = compare_detections(got, want)
    assert not report['ok']
    assert 'detection #3' in report['problems'][0]


def test_a_wrong_label_fails():
    want = _dets()
    got = _copy(want)
    got[2][0, 0] = 2
    assert not compare_detections(got, want)['ok']


def test_the_top_k_boundary_may_hold_another_near_tied_detection():
    want = _dets()
    got = _copy(want)
    # the exported run ranks a different detection K-th, scoring within
    # the tolerance of eager's K-th
    got[0][0, -1] = torch.tensor([1., 2., 30., 40.])
    got[1][0, -1] = want[1][0, -1] + SCORE_TOL / 2
    report = compare_detections(got, want)
    assert report['ok'], report
    assert report['boundary_unmatched'] == 2 and report['matched'] == 5
    # ... but not one far above the K-th score
    got = _copy(want)
    got[0][0, 2] = torch.tensor([1., 2., 30., 40.])
    report = compare_detections(got, want)
    assert not report['ok'] and len(report['problems']) == 2


def test_shapes_and_dtypes_are_checked():
    want = _dets()
    report = compare_detections([t[:, :5] for t in want], want)
    assert not report['ok'] and 'shapes differ' in report['problems'][0]
    got = _copy(want)
    got[2] = got[2].int()
    report = compare_detections([np.asarray(t) for t in got], want)
    assert not report['ok'] and 'int64' in report['problems'][0]
