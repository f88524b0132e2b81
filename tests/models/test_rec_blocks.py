"""What the recurrent baselines share: the masked time scan, the per-frame encoder, the masked mean, the checks."""

from __future__ import annotations

import pytest
import torch

from utae.models.rec_blocks import (
    check_input_size,
    check_widths,
    encode_frames,
    masked_time_mean,
    scan,
)
from utae.models.padding import resolve_pad_mask


def _sum_step(calls: list[int]):
    """A 'cell' whose state is the running sum of its inputs; it records the batch size of every call."""

    def step(x, state):
        calls.append(x.shape[0])
        return (state[0] + x,)

    return step


def test_scan_moves_a_state_only_on_kept_steps():
    x = torch.arange(1.0, 5.0).view(1, 4, 1, 1, 1).repeat(2, 1, 1, 1, 1)  # values 1, 2, 3, 4
    keep = torch.tensor([[True, False, True, False], [True, True, True, False]])
    calls: list[int] = []
    (out,) = scan(_sum_step(calls), x, (torch.zeros(2, 1, 1, 1),), keep=keep)
    assert out.flatten().tolist() == [1 + 3, 1 + 2 + 3]
    assert len(calls) == 3  # the last step, kept by no sample, is not computed
    (everything,) = scan(_sum_step([]), x, (torch.zeros(2, 1, 1, 1),))
    assert everything.flatten().tolist() == [10, 10]


def test_scan_in_reverse_reads_the_last_frame_first():
    x = torch.arange(1.0, 4.0).view(1, 3, 1, 1, 1)
    order: list[float] = []

    def step(frame, state):
        order.append(frame.item())
        return state

    scan(step, x, (torch.zeros(1, 1, 1, 1),), reverse=True)
    assert order == [3.0, 2.0, 1.0]


def test_encode_frames_runs_the_real_frames_only():
    x = torch.randn(2, 3, 2, 4, 4)
    pad = torch.tensor([[False, False, True], [False, True, True]])
    seen: list[int] = []

    def encoder(frames):
        seen.append(frames.shape[0])
        return [frames * 2, frames[:, :1, ::2, ::2]]

    full, small = encode_frames(encoder, x, pad, -1.0, "m")
    assert seen == [3]
    assert full.shape == (2, 3, 2, 4, 4) and small.shape == (2, 3, 1, 2, 2)
    assert torch.equal(full[~pad], 2 * x[~pad]) and bool((full[pad] == -1.0).all()) and bool((small[pad] == -1.0).all())
    seen.clear()
    encode_frames(encoder, x, torch.zeros(2, 3, dtype=torch.bool), 0.0, "m")
    assert seen == [6]
    with pytest.raises(ValueError, match=r"m: sample\(s\) \[1\]"):
        encode_frames(encoder, x, torch.tensor([[False, True, True], [True, True, True]]), 0.0, "m")


def test_masked_time_mean():
    x = torch.arange(6.0).view(2, 3, 1, 1, 1)  # sample 0: 0, 1, 2; sample 1: 3, 4, 5
    pad = torch.tensor([[False, False, True], [False, False, False]])
    assert masked_time_mean(x, pad).flatten().tolist() == [0.5, 4.0]
    assert masked_time_mean(x, torch.zeros(2, 3, dtype=torch.bool)).flatten().tolist() == [1.0, 4.0]


def test_pad_mask_inferred_from_pad_value():
    x = torch.randn(2, 3, 2, 4, 4)
    x[0, 2] = 5.0
    x[1, 1, 0, 0, 0] = 5.0  # one value equal to pad_value does not make a padded frame
    assert resolve_pad_mask(x, None, 5.0).tolist() == [[False, False, True], [False, False, False]]


def test_option_checks():
    assert check_input_size((32, 32)) == 32
    with pytest.raises(ValueError, match="input_size"):
        check_input_size((32, 16))
    assert check_widths("w", (4, 8), multiple_of=4) == [4, 8]
    for bad in (5, (4, 6), (4, True), ()):
        with pytest.raises(ValueError, match="^w must"):
            check_widths("w", bad, multiple_of=4)
