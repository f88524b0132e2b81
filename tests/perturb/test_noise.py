"""Tests of utae.perturb.noise: the functional core and the on-the-fly training augmentation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from utae.perturb.noise import NoiseSpec, NoisyDataset, add_noise, add_test_noise, normalized_std, select_noisy


class FakeDataset(torch.utils.data.Dataset):
    """Items like PastisDataset's, kept in memory (like cache=True) so mutations would show."""

    def __init__(self, n: int = 20, t: int = 3, c: int = 4, size: int = 8, std: np.ndarray | None = None) -> None:
        gen = torch.Generator().manual_seed(123)
        self.items = [
            {
                "image": torch.randn(t, c, size, size, generator=gen),
                "dates": torch.arange(t, dtype=torch.int64) * 5,
                "mask": torch.zeros(size, size, dtype=torch.int64),
                "patch_id": 1000 + i,
            }
            for i in range(n)
        ]
        self.std = np.linspace(1.0, 2.0, c).astype(np.float32) if std is None else std

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


# ---------------------------------------------------------------- add_noise


def test_added_noise_has_the_requested_std_and_zero_mean() -> None:
    image = torch.rand(4, 10, 64, 64)
    out = add_noise(image, 0.3, generator=torch.Generator().manual_seed(0))
    noise = out - image
    # n = 163,840 draws: the sample std has a relative standard error of 1 / sqrt(2 n) = 0.0018 and the mean
    # a standard error of 0.3 / sqrt(n) = 0.0007; both bounds are over 10 standard errors.
    assert noise.std().item() == pytest.approx(0.3, rel=0.02)
    assert abs(noise.mean().item()) < 0.01
    assert out.shape == image.shape and out.dtype == image.dtype


def test_numpy_image_gets_the_same_noise_as_a_tensor_for_the_same_seed() -> None:
    image = np.random.default_rng(0).random((3, 4, 16, 16), dtype=np.float32)
    out_np = add_noise(image, 0.2, generator=torch.Generator().manual_seed(7))
    out_t = add_noise(torch.from_numpy(image), 0.2, generator=torch.Generator().manual_seed(7))
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    np.testing.assert_array_equal(out_np, out_t.numpy())
    out_rng = add_noise(image, 0.2, generator=np.random.default_rng(1))
    # 3,072 draws: relative standard error of the sample std 1 / sqrt(2 * 3072) = 0.0128; 5 of them.
    assert (out_rng - image).std() == pytest.approx(0.2, rel=0.065)


@pytest.mark.parametrize("as_numpy", [False, True])
def test_padded_frames_come_back_bit_for_bit(as_numpy: bool) -> None:
    image = torch.randn(2, 5, 3, 8, 8)
    image[0, 3:] = 0.0
    image[0, 4, 0, 0, 0] = -0.0  # sign of zero must survive
    image[1, 4, 1, 2, 3] = float("nan")
    pad_mask = torch.tensor([[False, False, False, True, True], [False, False, False, False, True]])
    if as_numpy:
        out = torch.from_numpy(add_noise(image.numpy(), 1.0, pad_mask.numpy(), torch.Generator().manual_seed(0)))
    else:
        out = add_noise(image, 1.0, pad_mask, torch.Generator().manual_seed(0))
    assert torch.equal(_bits(out[pad_mask]), _bits(image[pad_mask]))
    assert torch.signbit(out[0, 4, 0, 0, 0])
    valid = ~pad_mask
    assert not torch.any(out[valid] == image[valid])  # every value of every real frame moved


def test_unbatched_pad_mask() -> None:
    image = torch.randn(4, 2, 4, 4)
    pad = torch.tensor([False, True, False, True])
    out = add_noise(image, 0.5, pad, torch.Generator().manual_seed(1))
    assert torch.equal(out[pad], image[pad])
    assert not torch.equal(out[~pad], image[~pad])


def test_std_zero_returns_an_unchanged_copy() -> None:
    image = torch.randn(3, 2, 4, 4)
    out = add_noise(image, 0.0)
    assert torch.equal(_bits(out), _bits(image))
    assert out.data_ptr() != image.data_ptr()
    arr = image.numpy().copy()
    out_np = add_noise(arr, 0)
    np.testing.assert_array_equal(out_np, arr)
    assert out_np is not arr and not np.shares_memory(out_np, arr)


def test_input_is_never_modified() -> None:
    image = torch.randn(3, 2, 4, 4)
    before = image.clone()
    add_noise(image, 2.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(image, before)


def test_per_channel_std() -> None:
    image = torch.zeros(2, 3, 64, 64)
    out = add_noise(image, [0.1, 1.0, 5.0], generator=torch.Generator().manual_seed(0))
    per_channel = out.transpose(0, 1).reshape(3, -1).std(dim=1)
    # 8,192 draws per channel: relative standard error of the sample std 1 / sqrt(2 * 8192) = 0.0078; 5 of them.
    np.testing.assert_allclose(per_channel.numpy(), [0.1, 1.0, 5.0], rtol=0.04)


@pytest.mark.parametrize("std", [-0.1, float("nan"), float("inf"), [0.1, -1.0]])
def test_bad_std_raises_naming_std(std) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="std"):
        add_noise(torch.zeros(2, 2, 2, 2), std)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\(T, C, H, W\)"):
        add_noise(torch.zeros(2, 4, 4), 0.1)
    with pytest.raises(ValueError, match="pad_mask"):
        add_noise(torch.zeros(2, 3, 1, 4, 4), 0.1, pad_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="pad_mask"):
        add_noise(torch.zeros(3, 1, 4, 4), 0.1, pad_mask=torch.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        add_noise(torch.zeros(3, 1, 4, 4, dtype=torch.int16), 0.1)
    with pytest.raises(ValueError, match="channels"):
        add_noise(torch.zeros(3, 2, 4, 4), [0.1, 0.2, 0.3])


def test_test_noise_of_a_patch_depends_on_seed_patch_and_std_only() -> None:
    image = torch.randn(3, 3, 2, 4, 4)
    pad = torch.tensor([[False, False, True], [False, False, False], [False, True, True]])
    ids = torch.tensor([10, 11, 12])
    whole = add_test_noise(image, pad, ids, 0.4, seed=1)
    alone = add_test_noise(image[1:2], pad[1:2], ids[1:2], 0.4, seed=1)  # another batch composition
    assert torch.equal(whole[1], alone[0])
    assert torch.equal(whole[0, 2], image[0, 2]) and torch.equal(whole[2, 1:], image[2, 1:])  # padded frames
    assert not torch.equal(whole[0, 0], image[0, 0])
    assert not torch.equal(add_test_noise(image, pad, ids, 0.4, seed=2), whole)
    assert add_test_noise(image, pad, ids, 0.0, seed=1) is image


# ---------------------------------------------------------------- spec, selection, scaling


def test_noise_spec_validation_names_the_field() -> None:
    for kwargs, field in [
        ({"std": -1.0}, "std"),
        ({"std": float("nan")}, "std"),
        ({"fraction": 1.5}, "fraction"),
        ({"space": "log"}, "space"),
        ({"seed": -3}, "seed"),
        ({"resample": "yes"}, "resample"),
    ]:
        with pytest.raises(ValueError, match=field):
            NoiseSpec(**kwargs)


@pytest.mark.parametrize(("n", "fraction"), [(40, 0.25), (37, 0.5), (10, 0.25), (10, 0.0), (10, 1.0)])
def test_exact_fraction_of_noisy_samples(n: int, fraction: float) -> None:
    ds = NoisyDataset(FakeDataset(n=n), NoiseSpec(std=0.5, fraction=fraction, seed=2))
    chosen = ds.noisy_indices
    assert len(chosen) == round(fraction * n)
    assert chosen == sorted(set(chosen)) and all(0 <= i < n for i in chosen)
    changed = [i for i in range(n) if not torch.equal(ds[i]["image"], ds.dataset[i]["image"])]
    assert changed == chosen


def test_a_noise_fraction_that_would_noise_no_sample_is_refused() -> None:
    with pytest.raises(ValueError, match=r"^noise_fraction=0.01 selects no sample of the 24 training samples "
                                         r"\(round\(0.01 x 24\) = 0\); the smallest fraction that selects one is "
                                         r"0.0417 \(1/24\)$"):
        NoisyDataset(FakeDataset(n=24), NoiseSpec(std=0.5, fraction=0.01, seed=2))
    assert NoisyDataset(FakeDataset(n=24), NoiseSpec(std=0.0, fraction=0.01)).noisy_indices == []  # no noise asked
    assert select_noisy(0, 0.5, 1) == []  # nothing to select from


def test_selection_depends_on_seed_only() -> None:
    assert select_noisy(100, 0.3, 5) == select_noisy(100, 0.3, 5)
    assert select_noisy(100, 0.3, 5) != select_noisy(100, 0.3, 6)
    assert NoisyDataset(FakeDataset(n=30), NoiseSpec(std=0.0, fraction=0.5)).noisy_indices == []


def test_raw_space_scales_noise_by_the_channel_std() -> None:
    channel_std = np.array([10.0, 100.0, 1000.0, 2000.0])
    base = FakeDataset(n=4, c=4, size=64, std=channel_std)
    raw = NoisyDataset(base, NoiseSpec(std=500.0, fraction=1.0, space="raw", seed=0))
    noise = raw[0]["image"] - base[0]["image"]
    per_channel = noise.transpose(0, 1).reshape(4, -1).std(dim=1).numpy()
    # 12,288 draws per channel: relative standard error 1 / sqrt(2 * 12288) = 0.0064; 0.03 is 4.7 of them.
    np.testing.assert_allclose(per_channel, 500.0 / channel_std, rtol=0.03)
    # Same seed in normalised space: the same draws, scaled by one std for every channel.
    norm = NoisyDataset(base, NoiseSpec(std=1.0, fraction=1.0, space="normalized", seed=0))
    noise_norm = norm[0]["image"] - base[0]["image"]
    scale = torch.as_tensor(500.0 / channel_std, dtype=torch.float32).view(1, 4, 1, 1)
    # Each side is (image + noise) - image in float32: off by at most 2^-23 (|image| + |noise|), i.e. 1.2e-7
    # relative to the noise plus 2^-23 * |image| ~ 5e-7 absolute (|image| < 5): within rtol=1e-4, atol=1e-5.
    torch.testing.assert_close(noise, noise_norm * scale, rtol=1e-4, atol=1e-5)


def test_raw_space_needs_channel_std() -> None:
    base = FakeDataset(n=2)
    del base.std
    with pytest.raises(ValueError, match="channel_std"):
        NoisyDataset(base, NoiseSpec(std=1.0, space="raw"))
    explicit = NoisyDataset(base, NoiseSpec(std=1.0, space="raw"), channel_std=np.full(4, 2.0))
    np.testing.assert_allclose(explicit.std_normalized, np.full(4, 0.5))
    with pytest.raises(ValueError, match="channel_std"):
        normalized_std(1.0, "raw", np.array([1.0, 0.0]))
    assert normalized_std(0.3) == 0.3


# ---------------------------------------------------------------- epochs, determinism, non-destructiveness


def test_same_noise_every_epoch_by_default() -> None:
    ds = NoisyDataset(FakeDataset(n=6), NoiseSpec(std=0.5, fraction=1.0, seed=1))
    first = ds[2]["image"].clone()
    ds.set_epoch(5)
    assert torch.equal(ds[2]["image"], first)


def test_resample_draws_fresh_noise_each_epoch_reproducibly() -> None:
    ds = NoisyDataset(FakeDataset(n=6), NoiseSpec(std=0.5, fraction=1.0, seed=1, resample=True))
    ds.set_epoch(0)
    e0 = ds[2]["image"].clone()
    ds.set_epoch(1)
    e1 = ds[2]["image"].clone()
    assert not torch.equal(e0, e1)
    ds.set_epoch(0)
    assert torch.equal(ds[2]["image"], e0)
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_noise_does_not_depend_on_read_order_or_global_rng() -> None:
    spec = NoiseSpec(std=0.5, fraction=1.0, seed=3)
    a = NoisyDataset(FakeDataset(n=5), spec)
    b = NoisyDataset(FakeDataset(n=5), spec)
    torch.manual_seed(0)
    first = [a[i]["image"] for i in range(5)]
    torch.manual_seed(99)
    second = [b[i]["image"] for i in reversed(range(5))][::-1]
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert torch.equal(a[-1]["image"], first[4])
    with pytest.raises(IndexError):
        a[5]


def test_wrapped_dataset_is_not_modified() -> None:
    base = FakeDataset(n=8)
    originals = [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in it.items()} for it in base.items]
    image_ids = [id(it["image"]) for it in base.items]
    ds = NoisyDataset(base, NoiseSpec(std=3.0, fraction=0.5, seed=0, resample=True))
    for epoch in range(2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            if i in ds.noisy_indices:
                assert item is not base.items[i]
                assert item["patch_id"] == base.items[i]["patch_id"]
    for it, orig, ident in zip(base.items, originals, image_ids):
        assert id(it["image"]) == ident
        for key, value in orig.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(it[key], value)
            else:
                assert it[key] == value


def test_picklable_and_independent_of_worker_count() -> None:
    ds = NoisyDataset(FakeDataset(n=8), NoiseSpec(std=0.5, fraction=0.5, seed=4, resample=True))
    ds.set_epoch(2)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.noisy_indices == ds.noisy_indices
    assert all(torch.equal(clone[i]["image"], ds[i]["image"]) for i in range(len(ds)))

    def images(num_workers: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=num_workers, shuffle=False)
        return torch.cat([batch["image"] for batch in loader])

    torch.testing.assert_close(images(0), images(2), rtol=0, atol=0)
