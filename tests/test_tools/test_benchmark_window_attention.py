"""tools/benchmark_window_attention.py measures both variants of a tiny
backbone (the same code path as the ViT-B/16 1024 px measurement)."""
import pytest
import torch

from tools.benchmark_window_attention import run_variant


@pytest.mark.parametrize('window,blocks', [(None, None), (2, [1, 3])])
def test_one_variant_reports_its_numbers(window, blocks):
    threads = torch.get_num_threads()
    try:
        row = run_variant('ViT-Tiny-16-test', 80, window, blocks, 'cpu', 1)
    finally:
        torch.set_num_threads(threads)  # run_variant sets it
    assert row['window_size'] == window
    assert row['global_blocks'] == blocks
    assert row['time_s'] > 0 and row['tensor_peak_mib'] > 0
    assert row['rss_peak_delta_mib'] is not None
