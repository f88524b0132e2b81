"""TSViT: parity with the official model, the date mapping, padding masks, the output layout and input checks."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from utae.models.tsvit import TSViT, day_of_year

BASELINES = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "baselines"
#: Parity bar of the reference README: logits of magnitude ~2, which one thread against two moves by ~1e-6.
ATOL = 1e-4
#: The same real frames with and without padding: masked keys get exactly zero weight, so only the softmax's
#: and the matmuls' summation order (float32, ~1e-7 relative, over 4 transformer layers) differs; 1e-5 leaves
#: a factor of about 10 over the ~1e-6 that the README measures between thread counts.
BATCH_ATOL = 1e-5
PASTIS_REFERENCE = datetime.date(2018, 9, 1)


@pytest.fixture(scope="module")
def baselines() -> Path:
    if not (BASELINES / "tsvit_state_dict.npz").is_file():
        pytest.skip(f"TSViT reference outputs not found at {BASELINES} (the shared folder is absent)")
    return BASELINES


def _official(baselines: Path, **options) -> TSViT:
    config = json.loads((baselines / "tsvit_config.json").read_text())
    model = TSViT.from_config(config, **options)
    state = {k: torch.from_numpy(v) for k, v in np.load(baselines / "tsvit_state_dict.npz").items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def case(baselines: Path) -> dict[str, torch.Tensor]:
    """The reference case in our layout: ``x (2, 16, 10, 24, 24)`` without the time channel."""
    raw = np.load(baselines / "tsvit_case.npz")
    return {
        "x": torch.from_numpy(raw["x"][..., :10]).permute(0, 1, 4, 2, 3).contiguous(),
        "time_channel": torch.from_numpy(raw["x"][..., 10]),
        "doy": torch.from_numpy(raw["doy"]),
        "logits": torch.from_numpy(raw["logits"]),
    }


def _days_since_pastis_reference(doy: torch.Tensor) -> torch.Tensor:
    """The PASTIS offsets (days since 2018-09-01) of the dates with these days of year (0 = January 1) in the
    year from 2018-09-01 to 2019-08-31, computed with ``datetime``."""
    def offset(d: int) -> int:
        year = 2018 if datetime.date(2018, 1, 1) + datetime.timedelta(d) >= PASTIS_REFERENCE else 2019
        return (datetime.date(year, 1, 1) + datetime.timedelta(d) - PASTIS_REFERENCE).days

    return torch.tensor([[offset(int(d)) for d in row] for row in doy])


def test_the_case_days_are_the_official_time_channel(case):
    """The official model reads int(v * 365.0001) at pixel (0, 0): the ``doy`` array the parity tests use."""
    read = (case["time_channel"][:, :, 0, 0].double() * 365.0001).long()
    assert torch.equal(read, case["doy"])


@pytest.mark.parametrize("dates", ["pastis_offsets", "day_of_year"])
def test_parity_with_official_logits(baselines, case, dates):
    if dates == "day_of_year":
        model, positions = _official(baselines, reference_date=None), case["doy"]
    else:
        model, positions = _official(baselines), _days_since_pastis_reference(case["doy"])
    with torch.no_grad():
        logits = model(case["x"], positions)
    assert logits.shape == case["logits"].shape
    assert (logits - case["logits"]).abs().max().item() < ATOL


def test_keys_and_parameter_counts(baselines):
    model = _official(baselines)
    assert list(model.state_dict()) == list(np.load(baselines / "tsvit_state_dict.npz").files)
    assert len(model.state_dict()) == 58
    assert sum(p.numel() for p in model.parameters()) == 69_060
    assert sum(p.numel() for p in TSViT(num_classes=19).parameters()) == 1_657_476  # PASTIS24: the defaults
    assert TSViT.uses_dates is True


def test_day_of_year_matches_the_calendar():
    epoch = datetime.date(1970, 1, 1)
    days = torch.cat([torch.arange(-700_000, 2_900_000, 997), torch.arange(17_800, 19_000)])  # years 53 to 9909
    expected = torch.tensor([(epoch + datetime.timedelta(int(d))).timetuple().tm_yday - 1 for d in days])
    assert torch.equal(day_of_year(days), expected)


def test_geometric_unpatchify_is_the_inverse_pixel_permutation(baselines, case):
    official = _official(baselines)
    geometric = _official(baselines, unpatchify="geometric")
    positions = case["doy"]
    with torch.no_grad():
        a = official.eval()(case["x"], _days_since_pastis_reference(positions))
        b = geometric.eval()(case["x"], _days_since_pastis_reference(positions))
    size, p = 24, 2
    grid = size // p
    for i in range(size * size):  # official pixel i holds patch n = i // P**2, unit q = i % P**2
        n, q = divmod(i, p * p)
        row, col = p * (n // grid) + q // p, p * (n % grid) + q % p
        assert torch.equal(b[:, :, row, col], a[:, :, i // size, i % size])
    assert (a - b).abs().max().item() > 0.5  # the layouts differ (ARCHITECTURES.md measures 2.39)


def _tiny(**options) -> TSViT:
    torch.manual_seed(0)
    small = dict(input_dim=3, num_classes=4, input_size=8, dim=16, temporal_depth=2, spatial_depth=1, heads=2,
                 dim_head=8)
    return TSViT(**{**small, **options})


def _series(b: int, t: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 3, 8, 8, generator=g)
    days = torch.sort(torch.randint(-30, 420, (b, t), generator=g), dim=1).values
    return x, days


def _pad(x: torch.Tensor, days: torch.Tensor, t: int, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    n = t - x.shape[1]
    x = torch.cat([x, torch.full((x.shape[0], n, *x.shape[2:]), fill)], dim=1)
    return x, torch.cat([days, torch.zeros(days.shape[0], n, dtype=days.dtype)], dim=1)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("length", [1, 5])
def test_a_series_alone_and_in_a_padded_batch_agree(train, length):
    """Dropout is 0 by default, so train mode is deterministic; LayerNorm is per token."""
    model = _tiny().train(train)
    x, days = _series(1, length, 1)
    other_x, other_days = _series(1, 9, 2)
    px, pdays = _pad(x, days, 9)
    with torch.no_grad():
        alone = model(x, days)
        batch = model(torch.cat([other_x, px]), torch.cat([other_days, pdays]))
    assert (batch[1] - alone[0]).abs().max().item() < BATCH_ATOL


def test_padded_frames_are_masked_whatever_they_hold():
    """An explicit mask: NaN frames and out-of-range days on padded frames change nothing."""
    model = _tiny(reference_date=None).eval()
    x, _ = _series(1, 4, 3)
    days = torch.tensor([[3, 50, 200, 365]])
    px, pdays = _pad(x, days, 7, fill=float("nan"))
    pdays[0, 4:] = 9999
    mask = torch.tensor([[False] * 4 + [True] * 3])
    with torch.no_grad():
        alone = model(x, days)
        padded = model(px, pdays, mask)
        unmasked = model(torch.nan_to_num(px), pdays.clamp(max=365), torch.zeros_like(mask))
    assert torch.isfinite(padded).all()
    assert (padded - alone).abs().max().item() < BATCH_ATOL
    assert (unmasked - alone).abs().max().item() > 1e-3  # attending to the padded dates, as officially, differs


def test_dates_move_the_logits_and_the_reference_date_shifts_them():
    model = _tiny().eval()
    x, days = _series(1, 4, 4)
    shifted = _tiny(reference_date="2018-08-22").eval()  # 10 days earlier
    with torch.no_grad():
        base = model(x, days)
        assert (model(x, days + 1) - base).abs().max().item() > 1e-4
        assert (shifted(x, days + 10) - base).abs().max().item() == 0.0


def test_max_seq_len():
    x, days = _series(1, 6, 5)
    with pytest.raises(ValueError, match="max_seq_len=5"):
        _tiny(max_seq_len=5)(x, days)
    assert _tiny()(x, days).shape == (1, 4, 8, 8)  # None: any length, as officially


@pytest.mark.parametrize(
    ("options", "name"),
    [({"patch_size": 3}, "patch_size"), ({"dim": 0}, "dim"), ({"heads": 1.5}, "heads"), ({"pool": "max"}, "pool"),
     ({"dropout": 1.0}, "dropout"), ({"max_seq_len": 0}, "max_seq_len"), ({"unpatchify": "inverse"}, "unpatchify"),
     ({"reference_date": "2018-13-01"}, "reference_date")],
)
def test_bad_options_name_the_option(options, name):
    with pytest.raises(ValueError, match=name):
        _tiny(**options)


def test_bad_inputs_are_one_line_errors():
    model = _tiny().eval()
    x, days = _series(1, 4, 6)
    with pytest.raises(ValueError, match="input_size=8"):
        model(torch.zeros(1, 4, 3, 16, 16), days)
    with pytest.raises(ValueError, match="input_dim=3"):
        model(torch.zeros(1, 4, 2, 8, 8), days)
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, days.float())
    with pytest.raises(ValueError, match="batch_positions must have shape"):
        model(x, days[:, :3])
    with pytest.raises(ValueError, match="only padded frames"):
        model(torch.zeros_like(x), days)
    with pytest.raises(ValueError, match="0..365"):
        _tiny(reference_date=None)(x, torch.tensor([[0, 10, 366, 20]]))
