"""utae.perturb.corruptions: determinism, identity at severity 0, padding and inputs untouched, statistics that match the
definitions of the severity table, one-line errors for bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.utils.data import DataLoader, Dataset

from utae.perturb.kinds import (KINDS, SEVERITIES, SEVERITY_TABLE, CorruptionSpec, check_severity,
                                   corruption_params, parse_corruption_spec, severity_table_rows)
from utae.perturb.corruptions import CLOUD_SPECTRUM, CONSTANTS, HAZE_SPECTRUM, corrupt, corrupt_batch
from utae.pastis.dataset import pad_collate
from utae.perturb.noise import add_test_noise

C, H, W = 10, 16, 16
MEAN = np.linspace(800.0, 3000.0, C)
STD = np.linspace(300.0, 1200.0, C)
NORM = (MEAN, STD)
ALL = [(k, s) for k in KINDS for s in SEVERITIES]


def _raw_series(t: int, seed: int) -> torch.Tensor:
    """A raw-reflectance-like series ``(t, C, H, W)``: a smooth field per band plus texture, 200..6000."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand((t, C, 1, 1), generator=g) * 4000 + 500
    tex = torch.rand((t, C, H, W), generator=g) * 1500
    return base + tex


def _norm(raw: torch.Tensor) -> torch.Tensor:
    return ((raw - torch.tensor(MEAN, dtype=torch.float32).reshape(-1, 1, 1))
            / torch.tensor(STD, dtype=torch.float32).reshape(-1, 1, 1))


def _raw(x: torch.Tensor) -> torch.Tensor:
    return (x.double() * torch.tensor(STD).reshape(-1, 1, 1) + torch.tensor(MEAN).reshape(-1, 1, 1))


def _items(n: int = 6, t_range: tuple[int, int] = (6, 14)) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        t = int(rng.integers(t_range[0], t_range[1] + 1))
        out.append({"image": _norm(_raw_series(t, 100 + i)), "dates": torch.as_tensor(np.sort(rng.choice(400, t,
                    replace=False)) + 1, dtype=torch.int64), "mask": torch.zeros((H, W), dtype=torch.int64),
                    "patch_id": 1000 + 7 * i})
    return out


# --------------------------------------------------------------------------------------------------
# Determinism, identity, padding, inputs
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,severity", ALL)
def test_batch_order_and_padding_do_not_change_a_patch(kind: str, severity: int) -> None:
    items = _items()
    alone = [corrupt(it["image"], it["dates"], kind, severity, seed=3, patch_id=it["patch_id"], norm=NORM)
             for it in items]
    for order, bs in (([0, 1, 2, 3, 4, 5], 4), ([5, 3, 1, 0, 2, 4], 3), ([2, 0, 4, 1, 5, 3], 6)):
        for start in range(0, len(order), bs):
            chunk = [items[i] for i in order[start:start + bs]]
            batch = pad_collate(chunk)
            before = batch["image"].clone(), batch["dates"].clone(), batch["pad_mask"].clone()
            img, dates, pad = corrupt_batch(batch["image"], batch["dates"], kind, severity, seed=3,
                                            patch_ids=batch["patch_id"], norm=NORM, pad_mask=batch["pad_mask"])
            # the input batch is never modified
            assert torch.equal(batch["image"], before[0]) and torch.equal(batch["dates"], before[1])
            assert torch.equal(batch["pad_mask"], before[2])
            for j, i in enumerate(order[start:start + bs]):
                ref_img, ref_dates, ref_pad = alone[i]
                n = ref_img.shape[0]
                assert int((~pad[j]).sum()) == n
                assert torch.equal(img[j, :n], ref_img) and torch.equal(dates[j, :n], ref_dates)
                # padded frames are the pad value (0) and padded dates 0, as pad_collate makes them
                assert torch.all(img[j, n:] == 0) and torch.all(dates[j, n:] == 0) and torch.all(pad[j, n:])


@pytest.mark.parametrize("kind,severity", ALL)
def test_padded_frames_untouched_and_determinism(kind: str, severity: int) -> None:
    it = _items(1)[0]
    t = it["image"].shape[0]
    # padding in the middle and at the end, filled with a value no corruption produces
    image = torch.cat([it["image"][:3], torch.full((2, C, H, W), 123.0), it["image"][3:],
                       torch.full((1, C, H, W), -7.0)])
    dates = torch.cat([it["dates"][:3], torch.tensor([0, 0]), it["dates"][3:], torch.tensor([0])])
    pad = torch.zeros(t + 3, dtype=torch.bool)
    pad[3:5] = True
    pad[-1] = True
    copy = image.clone()
    out, out_dates, out_pad = corrupt(image, dates, kind, severity, seed=5, patch_id=42, norm=NORM, pad_mask=pad)
    assert torch.equal(image, copy)
    assert int(out_pad.sum()) == 3
    assert torch.equal(out[out_pad], image[pad]) and torch.all(out_dates[out_pad] == 0)
    # the same patch without its padding gets the same corruption; a second call gives the same again
    ref, ref_dates, _ = corrupt(it["image"], it["dates"], kind, severity, seed=5, patch_id=42, norm=NORM)
    assert torch.equal(out[~out_pad], ref) and torch.equal(out_dates[~out_pad], ref_dates)
    again = corrupt(it["image"], it["dates"], kind, severity, seed=5, patch_id=42, norm=NORM)
    assert torch.equal(again[0], ref)
    # another seed, another patch id: other draws (date_shift has only a sign to draw: check the image kinds)
    if kind not in ("date_shift",):
        other = corrupt(it["image"], it["dates"], kind, severity, seed=6, patch_id=42, norm=NORM)
        assert not (torch.equal(other[0], ref) and torch.equal(other[1], ref_dates))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("none", [0, "none", None])
def test_severity_zero_is_the_identity(kind: str, none) -> None:
    it = _items(1)[0]
    out, dates, pad = corrupt(it["image"], it["dates"], kind, none, seed=0, patch_id=1, norm=NORM)
    assert torch.equal(out, it["image"]) and torch.equal(dates, it["dates"]) and not pad.any()
    assert out.data_ptr() != it["image"].data_ptr()  # a copy, never the input itself


class _Corrupted(Dataset):
    def __init__(self, items: list[dict], kind: str, severity: int) -> None:
        self.items, self.kind, self.severity = items, kind, severity

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        img, dates, _ = corrupt(it["image"], it["dates"], self.kind, self.severity, seed=9, patch_id=it["patch_id"],
                                norm=NORM)
        return {**it, "image": img, "dates": dates}


def test_worker_count_does_not_matter() -> None:
    items = _items()
    for kind in ("clouds", "missing_dates", "misregistration"):
        ds = _Corrupted(items, kind, 5)
        outs = []
        for workers in (0, 2):
            loader = DataLoader(ds, batch_size=4, collate_fn=pad_collate, num_workers=workers)
            outs.append([b["image"] for b in loader])
        assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_gaussian_is_todays_test_noise() -> None:
    items = _items(3)
    batch = pad_collate(items)
    for sev in SEVERITIES:
        std = SEVERITY_TABLE["gaussian"][sev]["std"]
        ref = add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], std, seed=4)
        out, _, _ = corrupt_batch(batch["image"], batch["dates"], "gaussian", sev, seed=4,
                                  patch_ids=batch["patch_id"], pad_mask=batch["pad_mask"])
        assert torch.equal(out, ref)
        diff = (out - batch["image"])[~batch["pad_mask"]]
        n = diff.numel()
        # the sample std of n N(0, std) draws has a relative standard error of 1/sqrt(2n); allow 5 of them
        assert abs(float(diff.std()) / std - 1.0) < 5.0 / math.sqrt(2 * n)


# --------------------------------------------------------------------------------------------------
# Statistics of each kind
# --------------------------------------------------------------------------------------------------


def _changed_frames(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a != b).flatten(1).any(dim=1)


@pytest.mark.parametrize("severity", SEVERITIES)
def test_clouds_cover_shadows_and_smoothness(severity: int) -> None:
    p = SEVERITY_TABLE["clouds"][severity]
    cloud_raw = CONSTANTS["cloud_level"] * torch.tensor(CLOUD_SPECTRUM, dtype=torch.float64).reshape(-1, 1, 1)
    covers, edge_share = [], []
    for it in _items(8):
        x, t = it["image"], it["image"].shape[0]
        out, _, _ = corrupt(x, it["dates"], "clouds", severity, seed=1, patch_id=it["patch_id"], norm=NORM)
        changed = _changed_frames(out, x)
        # the share of cloudy dates is exactly max(1, round(date_share * T))
        assert int(changed.sum()) == max(1, math.floor(p["date_share"] * t + 0.5))
        raw_in, raw_out = _raw(x[changed]), _raw(out[changed])
        # a cloud pixel reads the cloud reflectance in every band (float32 normalisation: 1e-6 relative)
        cloud = torch.isclose(raw_out, cloud_raw.expand_as(raw_out), rtol=1e-5, atol=0.1).all(dim=1)
        # the cover of each cloudy frame is exactly round(cover * H * W) pixels
        assert torch.all(cloud.flatten(1).sum(1) == math.floor(p["cover"] * H * W + 0.5))
        covers.append(cloud.float().mean().item())
        # outside the clouds a pixel is untouched or in shadow: darkened by the shadow factor in every band
        rest = ~cloud[:, None].expand_as(raw_out)
        shade = torch.isclose(raw_out, raw_in * CONSTANTS["shadow_factor"], rtol=1e-5, atol=0.1)
        same = raw_out == raw_in
        assert torch.all((shade | same)[rest])
        shadow = (shade & ~same).all(dim=1) & ~cloud
        assert shadow.any()  # shadows fall 2..6 px away, inside a 16 px patch for most directions
        # smooth: a random mask of cover p has a share 2p(1-p) of unlike neighbour pairs; clouds have far fewer
        c = cloud.float()
        unlike = ((c[:, 1:] != c[:, :-1]).float().mean() + (c[:, :, 1:] != c[:, :, :-1]).float().mean()) / 2
        edge_share.append(float(unlike) / (2 * p["cover"] * (1 - p["cover"])))
    assert np.mean(covers) == pytest.approx(math.floor(p["cover"] * H * W + 0.5) / (H * W))
    assert max(edge_share) < 0.5


@pytest.mark.parametrize("severity", SEVERITIES)
def test_haze_lifts_and_flattens(severity: int) -> None:
    p = SEVERITY_TABLE["haze"][severity]
    level = CONSTANTS["haze_level"] * torch.tensor(HAZE_SPECTRUM, dtype=torch.float64).reshape(-1, 1, 1)
    ratios = []
    for it in _items(8):
        x, t = it["image"], it["image"].shape[0]
        out, _, _ = corrupt(x, it["dates"], "haze", severity, seed=2, patch_id=it["patch_id"], norm=NORM)
        changed = _changed_frames(out, x)
        assert int(changed.sum()) == max(1, math.floor(p["date_share"] * t + 0.5))
        raw_in, raw_out = _raw(x[changed]), _raw(out[changed])
        # raw' = (1 - a) raw + a L: the same opacity a in every band of a pixel, within 0.5..1.5 x the mean opacity
        # a read from the band where the haze differs most from the ground (best conditioned), then every band
        # rebuilt from it; float32 normalised values carry ~1e-3 raw units of rounding, 0.05 leaves room for it
        gap = level - raw_in
        best = gap.abs().argmax(dim=1, keepdim=True)
        a = ((raw_out - raw_in).gather(1, best) / gap.gather(1, best))
        assert torch.allclose((1 - a) * raw_in + a * level, raw_out, rtol=0, atol=0.05)
        assert float(a.min()) >= 0.5 * p["opacity"] - 1e-3 and float(a.max()) <= 1.5 * p["opacity"] + 1e-3
        ratios.extend((a[:, 0].flatten(1).mean(1) / p["opacity"]).tolist())
        # lifted and flattened: every value is pulled towards the haze layer's, by the factor 1 - a
        assert torch.all((raw_out - level).abs() <= (raw_in - level).abs() + 0.05)
    # the opacity field is 0.5 + sigmoid(f) times the mean, f symmetric about 0: a frame's mean ratio is 1 in
    # expectation; a one-sample t-test over the frames keeps the tolerance tied to their spread and count
    assert stats.ttest_1samp(ratios, 1.0).pvalue > 1e-4


@pytest.mark.parametrize("severity", SEVERITIES)
def test_missing_dates_removes_the_share_and_keeps_one(severity: int) -> None:
    share = SEVERITY_TABLE["missing_dates"][severity]["drop_share"]
    for it in _items(6, (1, 14)) + _items(2, (1, 1)):
        x, d = it["image"], it["dates"]
        t = x.shape[0]
        out, dates, pad = corrupt(x, d, "missing_dates", severity, seed=0, patch_id=it["patch_id"], norm=NORM)
        assert out.shape[0] == t - min(math.floor(share * t + 0.5), t - 1) >= 1
        # frames and dates leave together: the kept ones are the originals at the kept dates, in order
        idx = torch.searchsorted(d, dates)
        assert torch.equal(d[idx], dates) and torch.all(idx[1:] > idx[:-1]) and torch.equal(out, x[idx])
        assert not pad.any()


@pytest.mark.parametrize("severity", SEVERITIES)
def test_band_dropout_share(severity: int) -> None:
    p = SEVERITY_TABLE["band_dropout"][severity]
    dead = _norm(torch.zeros((1, C, 1, 1)))[0]
    for it in _items(6):
        x, t = it["image"], it["image"].shape[0]
        out, _, _ = corrupt(x, it["dates"], "band_dropout", severity, seed=0, patch_id=it["patch_id"], norm=NORM)
        lost = (out != x).flatten(2).any(dim=2)  # (T, C)
        # a lost band reads 0 reflectance over the whole frame; the others are untouched
        assert torch.all((out == dead.expand_as(out)).flatten(2).all(2)[lost])
        assert torch.equal(out[~lost], x[~lost])
        n_dates = max(1, math.floor(p["date_share"] * t + 0.5))
        assert int(lost.any(1).sum()) == n_dates and torch.all(lost.sum(1)[lost.any(1)] == p["n_bands"])
        assert float(lost.float().mean()) == pytest.approx(n_dates * p["n_bands"] / (t * C))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_misregistration_shifts(severity: int) -> None:
    p = SEVERITY_TABLE["misregistration"][severity]
    k = p["max_shift"]
    shifts = []
    for it in _items(10):
        x, t = it["image"], it["image"].shape[0]
        out, _, _ = corrupt(x, it["dates"], "misregistration", severity, seed=0, patch_id=it["patch_id"], norm=NORM)
        changed = _changed_frames(out, x)
        assert int(changed.sum()) == max(1, math.floor(p["date_share"] * t + 0.5))
        for ti in torch.nonzero(changed).flatten().tolist():
            # find the integer shift that maps the frame onto the corrupted one (border pixels repeat)
            found = [(dy, dx) for dy in range(-k, k + 1) for dx in range(-k, k + 1)
                     if torch.equal(out[ti, :, max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)],
                                    x[ti, :, max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)])]
            assert len(found) == 1 and found[0] != (0, 0)
            shifts.append(found[0])
    dy = np.array([s[0] for s in shifts], float)
    # (dy, dx) is uniform on [-k, k]^2 without (0, 0): dy has mean 0 and variance (sum of dy^2) / (side^2 - 1);
    # its sample mean lies within 4 standard errors of 0
    side = 2 * k + 1
    var = side * sum(v * v for v in range(-k, k + 1)) / (side * side - 1)
    assert abs(dy.mean()) < 4 * math.sqrt(var / len(dy))
    assert max(max(abs(a), abs(b)) for a, b in shifts) <= k


@pytest.mark.parametrize("severity", SEVERITIES)
def test_date_shift(severity: int) -> None:
    days = SEVERITY_TABLE["date_shift"][severity]["days"]
    signs = []
    for it in _items(40, (2, 4)):
        out, dates, _ = corrupt(it["image"], it["dates"], "date_shift", severity, seed=0, patch_id=it["patch_id"])
        delta = dates - it["dates"]
        assert torch.equal(out, it["image"]) and len(set(delta.tolist())) == 1 and abs(int(delta[0])) == days
        signs.append(int(delta[0]) > 0)
    # the sign is a fair coin per patch: a two-sided binomial test over the 40 patches
    assert stats.binomtest(sum(signs), len(signs), 0.5).pvalue > 1e-4


# --------------------------------------------------------------------------------------------------
# The table, the spec, the errors
# --------------------------------------------------------------------------------------------------


def test_table_is_plain_data() -> None:
    assert set(SEVERITY_TABLE) == set(KINDS) and all(set(v) == set(SEVERITIES) for v in SEVERITY_TABLE.values())
    rows = severity_table_rows()
    assert len(rows) == len(KINDS) * len(SEVERITIES) and json.loads(json.dumps(rows)) == rows
    assert corruption_params("clouds", 3) == SEVERITY_TABLE["clouds"][3] and corruption_params("haze", "none") == {}


def test_spec_parsing() -> None:
    assert parse_corruption_spec("clouds:3") == CorruptionSpec("clouds", 3)
    spec = parse_corruption_spec({"kind": "missing_dates", "severity": [1, 5], "fraction": 0.25}, training=True)
    assert spec.severities == (1, 2, 3, 4, 5) and spec.to_json() == {"kind": "missing_dates", "severity": [1, 5],
                                                                     "fraction": 0.25}
    assert parse_corruption_spec(spec.to_json(), training=True) == spec
    assert parse_corruption_spec({"kind": "haze", "severity": "2-4", "fraction": 1}, training=True) \
        == CorruptionSpec("haze", (2, 4), 1.0)
    drawn = {spec.severity_for(0, i) for i in range(50)}
    assert drawn == set(SEVERITIES) and spec.severity_for(0, 7) == spec.severity_for(0, 7)
    assert spec.label() == "missing_dates:1-5" and parse_corruption_spec("clouds:3").label() == "clouds:3"


@pytest.mark.parametrize("value,training,message", [
    ("fog:3", False, r"corruption\.kind must be one of gaussian, clouds, haze, missing_dates, band_dropout, "
                     r"misregistration, date_shift; got 'fog'"),
    ("clouds:6", False, r"corruption\.severity must be one of 1, 2, 3, 4, 5; got 6"),
    ("clouds:0", False, r"corruption\.severity must be one of 1, 2, 3, 4, 5; got 0"),
    ({"kind": "clouds", "severity": [1, 5]}, True, r"corruption\.fraction is required for a training augmentation"),
    ({"kind": "clouds", "severity": 2, "fraction": 1.5}, True, r"corruption\.fraction must be a number in \(0, 1\]"),
    ({"kind": "clouds", "severity": [1, 5]}, False, r"corruption\.severity must be a single severity"),
    ("clouds", False, r"corruption must read 'kind:severity'"),
])
def test_spec_errors(value, training: bool, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        parse_corruption_spec(value, training=training)
    assert "\n" not in str(err.value)


def test_corrupt_errors() -> None:
    it = _items(1)[0]
    x, d = it["image"], it["dates"]
    with pytest.raises(ValueError, match="kind must be one of gaussian, clouds"):
        corrupt(x, d, "snow", 1, seed=0, patch_id=0, norm=NORM)
    with pytest.raises(ValueError, match=r"severity must be one of 0 \(or 'none'\), 1, 2, 3, 4, 5; got 7"):
        corrupt(x, d, "clouds", 7, seed=0, patch_id=0, norm=NORM)
    with pytest.raises(ValueError, match="clouds is defined on raw reflectance: pass norm"):
        corrupt(x, d, "clouds", 1, seed=0, patch_id=0)
    with pytest.raises(ValueError, match="norm: mean and std must each hold 10 values"):
        corrupt(x, d, "haze", 1, seed=0, patch_id=0, norm=(MEAN[:3], STD[:3]))
    all_pad = torch.ones(x.shape[0], dtype=torch.bool)
    for kind in KINDS:  # an all-padded series: refused naming the kind asked for, not another
        with pytest.raises(ValueError, match=rf"^{kind}:3 needs a series with at least 1 real date to corrupt; got "
                                             r"n_dates=0 \(every frame is padding") as err:
            corrupt(x, d, kind, 3, seed=0, patch_id=0, norm=NORM, pad_mask=all_pad)
        assert kind == "missing_dates" or "missing_dates" not in str(err.value)
    with pytest.raises(ValueError, match=r"pad_mask must be a bool tensor"):
        corrupt(x, d, "clouds", 1, seed=0, patch_id=0, norm=NORM, pad_mask=all_pad.long())
    assert check_severity("none") == 0 and check_severity("3") == 3
