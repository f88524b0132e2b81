"""Windows, blending weights and the rolling blend (numpy only), and a window's series (prepare)."""

from __future__ import annotations

import numpy as np
import pytest

from utae.predict.prepare import fill_gaps, normalise, window_series
from utae.predict.stress import draw_id
from utae.predict.tiling import RollingBlend, grid, ramp, window_id, window_starts


@pytest.mark.parametrize("n, size, overlap", [(104, 32, 8), (90, 32, 8), (33, 32, 8), (20, 32, 8), (128, 128, 32),
                                              (10980, 128, 32), (100, 32, 0), (100, 32, 16)])
def test_windows_cover_the_axis_and_step_at_most_by_size_minus_overlap(n, size, overlap):
    starts = window_starts(n, size, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] == max(0, n - size)
    assert all(b - a <= size - overlap for a, b in zip(starts, starts[1:]))
    covered = np.zeros(n, dtype=int)
    for s in starts:
        covered[s:s + size] += 1
    assert (covered >= 1).all()


def test_bad_overlaps_are_refused():
    for overlap in (-1, 17):
        with pytest.raises(ValueError, match="overlap must be in 0..16"):
            window_starts(100, 32, overlap)


def test_ramps_are_positive_and_sum_to_one_where_windows_overlap_by_the_overlap():
    size, overlap, n = 32, 8, 32 + 3 * 24  # every neighbour overlaps by exactly the overlap
    starts = window_starts(n, size, overlap)
    total = np.zeros(n)
    for i, s in enumerate(starts):
        w = ramp(size, overlap, i > 0, i < len(starts) - 1)
        assert (w > 0).all() and (w <= 1).all()
        total[s:s + size] += w
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-6)  # sin^2 + cos^2, in float32
    assert (ramp(size, 0, True, True) == 1).all()


def _direct_blend(height, width, size, overlap, logits):
    """The blend over the whole raster at once: sums (L, K, H, W) and weights (H, W), float32, window order."""
    windows = [w for strip in grid(height, width, size, overlap) for w in strip]
    sums = np.zeros((logits[0].shape[0], logits[0].shape[1], height, width), dtype=np.float32)
    weight = np.zeros((height, width), dtype=np.float32)
    for w, out in zip(windows, logits):
        area = (slice(w.row, w.row + w.h), slice(w.col, w.col + w.w))
        for layer in range(out.shape[0]):
            sums[(layer, slice(None), *area)] += w.weight * out[layer]
        weight[area] += w.weight
    return windows, sums, weight


@pytest.mark.parametrize("height, width", [(100, 70), (20, 45), (32, 32)])
def test_the_rolling_blend_equals_the_blend_of_the_whole_raster(height, width):
    size, overlap, layers, classes = 32, 8, 2, 3
    rng = np.random.default_rng(0)
    n = sum(len(s) for s in grid(height, width, size, overlap))
    logits = [rng.standard_normal((layers, classes, min(size, height), min(size, width))).astype(np.float32)
              for _ in range(n)]
    windows, sums, weight = _direct_blend(height, width, size, overlap, logits)
    blend = RollingBlend(layers, classes, min(size, height), width)
    got_sums, got_weight = np.zeros_like(sums), np.zeros_like(weight)
    rows_seen = []

    def take(top, s, w):
        rows_seen.extend(range(top, top + w.shape[0]))
        got_sums[:, :, top:top + w.shape[0]], got_weight[top:top + w.shape[0]] = s, w

    k = 0
    for strip in grid(height, width, size, overlap):
        for rows in blend.advance(strip[0].row):
            take(*rows)
        for w in strip:
            blend.add_weight(w, w.weight)
            for layer in range(layers):
                blend.add(layer, w, logits[k][layer], w.weight)
            k += 1
    for rows in blend.finish(height):
        take(*rows)
    assert rows_seen == list(range(height))  # every row once, in order
    np.testing.assert_array_equal(got_weight, weight)  # the same float32 sums in the same order
    np.testing.assert_array_equal(got_sums, sums)
    assert blend.sums.shape[2] == min(size, height)  # the memory: one window's rows, whatever the height


def test_window_and_draw_ids_are_distinct():
    ids = {window_id(r, c) for r in range(0, 500, 96) for c in range(0, 11000, 96)}
    assert len(ids) == len(range(0, 500, 96)) * len(range(0, 11000, 96))
    draws = {draw_id(r, c, d) for r in (0, 96) for c in (0, 96, 10852) for d in range(8)}
    assert len(draws) == 2 * 3 * 8
    with pytest.raises(ValueError):
        window_id(1 << 20, 0)


def test_gaps_take_the_nearest_dates_values():
    days = np.array([0, 10, 14, 30])
    raw = np.arange(4 * 2 * 1 * 3, dtype=np.int16).reshape(4, 2, 1, 3) * 10
    valid = np.ones((4, 1, 3), dtype=bool)
    valid[1, 0, 0] = False           # nearest: day 14 (4 days) rather than day 0 (10 days)
    valid[2, 0, 1] = False           # nearest: day 10 (4 days) rather than day 30 (16)
    valid[1:3, 0, 2] = False         # days 10 and 14: day 0 (10 and 14 days) rather than day 30 (20 and 16)
    mean = np.array([1.5, 2.5], dtype=np.float32)
    out = fill_gaps(raw, valid, days, mean)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[1, :, 0, 0], raw[2, :, 0, 0])
    np.testing.assert_array_equal(out[2, :, 0, 1], raw[1, :, 0, 1])
    np.testing.assert_array_equal(out[1, :, 0, 2], raw[0, :, 0, 2])
    np.testing.assert_array_equal(out[2, :, 0, 2], raw[0, :, 0, 2])
    keep = np.broadcast_to(valid[:, None], raw.shape)
    np.testing.assert_array_equal(out[keep], raw[keep])  # valid values unchanged
    tie = fill_gaps(raw[:3], np.array([[[1]], [[0]], [[1]]], bool).repeat(3, axis=2), np.array([0, 5, 10]), mean)
    np.testing.assert_array_equal(tie[1], raw[0])  # a tie goes to the earlier date
    none = fill_gaps(raw[:2], np.zeros((2, 1, 3), dtype=bool), days[:2], mean)
    np.testing.assert_array_equal(none, np.broadcast_to(mean[None, :, None, None], none.shape))


def test_a_window_drops_its_nodata_dates_and_is_normalised_and_padded():
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 5000, size=(4, 10, 20, 24)).astype(np.int16)
    valid = np.ones((4, 20, 24), dtype=bool)
    valid[1] = False  # a nodata date
    mean, std = np.full(10, 1000, np.float32), np.full(10, 700, np.float32)
    image, days, pixels = window_series(raw, valid, np.array([3, 8, 20, 40]), mean, std, 32)
    assert image.shape == (3, 10, 32, 32) and days.tolist() == [3, 20, 40] and pixels.all()
    np.testing.assert_array_equal(image[:, :, :20, :24], normalise(raw[[0, 2, 3]], mean, std))
    np.testing.assert_array_equal(image[:, :, 20:, :24], image[:, :, 19:7:-1, :24])  # mirrored edge rows
    assert window_series(raw, np.zeros_like(valid), np.arange(4), mean, std, 32) is None
