"""Pad-free evaluation: a patch's prediction, and so the scores, do not depend on the evaluation batch.

U-TAE's L-TAE group-normalises over every time step of the batch, padded ones included, so in padded batches a
patch's logits depend on how much padding its batch needs. ``utae.engine.evaluate`` (``eval_mode="pad_free"``, the
default) runs each patch on its own real frames; these tests check that batch size 1 and 4, and another order,
give identical confusion matrices and losses, also under test noise and a corruption that changes the length.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from utae.corruption_spec import KINDS
from utae.data import PastisDataset, pad_collate
from utae.engine import EVAL_MODE, EVAL_MODES, evaluate
from utae.model import UTAE
from utae.synthetic import make_synthetic_pastis

SIZE = 16


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> PastisDataset:
    # 12 patches of 5 to 11 dates: the batches of 4 mix lengths, so padded batches pad most of their patches.
    root = make_synthetic_pastis(tmp_path_factory.mktemp("evalpad") / "pastis", n_patches=12, size=SIZE, seed=3,
                                 t_range=(5, 11))
    return PastisDataset(root)


@pytest.fixture(scope="module")
def model() -> UTAE:
    torch.manual_seed(0)
    m = UTAE(input_dim=10, encoder_widths=(8, 8, 8, 16), decoder_widths=(8, 8, 8, 16), out_conv=(8, 20), n_head=4,
             d_model=32, d_k=4)
    # Non-trivial eval-mode BatchNorm statistics and a GroupNorm input far from zero mean, so that padding matters.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _loader(ds, batch_size: int, order: list[int] | None = None) -> DataLoader:
    data = ds if order is None else Subset(ds, order)
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=pad_collate)


def test_lengths_differ(dataset: PastisDataset) -> None:
    lengths = {len(dataset.dates(i)) for i in range(len(dataset))}
    assert len(lengths) >= 3, lengths  # otherwise the batches of 4 would not be padded and the test would be moot


@pytest.mark.parametrize("kw", [{}, {"noise_std": 1.5, "seed": 2},
                                {"corruption": ("missing_dates", 4), "seed": 1},
                                {"corruption": ("clouds", 5), "seed": 1}])
def test_pad_free_scores_do_not_depend_on_the_batch(dataset: PastisDataset, model: UTAE, kw: dict) -> None:
    cpu = torch.device("cpu")
    kw = dict(kw)
    if "corruption" in kw:
        kw["norm"] = (dataset.mean, dataset.std)
    cm1, loss1 = evaluate(model, _loader(dataset, 1), cpu, **kw)
    cm4, loss4 = evaluate(model, _loader(dataset, 4), cpu, **kw)
    rev = list(range(len(dataset)))[::-1]
    cm4r, loss4r = evaluate(model, _loader(dataset, 4, rev), cpu, **kw)
    assert cm1.sum() == len(dataset) * SIZE * SIZE
    # Identical, not close: each patch goes through the same forward of one whatever the loader's batch. The mean
    # loss is a float64 sum of per-patch float32 sums in another order for the reversed loader: equal to rounding.
    assert np.array_equal(cm1, cm4) and np.array_equal(cm1, cm4r)
    assert loss1 == loss4
    assert loss4r == pytest.approx(loss1, rel=1e-12)


def test_padded_batches_depend_on_the_padding(dataset: PastisDataset, model: UTAE) -> None:
    """The reason for the pad-free mode: the same patch padded differently gets other logits."""
    item = dataset[0]
    longer = max(range(len(dataset)), key=lambda i: len(dataset.dates(i)))
    assert len(dataset.dates(longer)) > item["image"].shape[0]
    alone = pad_collate([item])
    padded = pad_collate([item, dataset[longer]])
    with torch.no_grad():
        a = model(alone["image"], batch_positions=alone["dates"], pad_mask=alone["pad_mask"])[0]
        b = model(padded["image"], batch_positions=padded["dates"], pad_mask=padded["pad_mask"])[0]
    # float32 rounding is ~1e-6 of the logits' scale; the padding's effect is far above it.
    assert (a - b).abs().max() > 1e-4 * a.abs().max()


def test_eval_mode_names_and_errors(dataset: PastisDataset, model: UTAE) -> None:
    assert EVAL_MODE == "pad_free" and set(EVAL_MODES) == {"pad_free", "padded_batches"}
    cpu = torch.device("cpu")
    cm_pad, _ = evaluate(model, _loader(dataset, 4), cpu, eval_mode="padded_batches")
    assert cm_pad.sum() == len(dataset) * SIZE * SIZE
    with pytest.raises(ValueError, match="eval_mode must be one of pad_free, padded_batches"):
        evaluate(model, _loader(dataset, 4), cpu, eval_mode="padded")
    with pytest.raises(ValueError, match="kind must be one of"):
        evaluate(model, _loader(dataset, 4), cpu, corruption=("fog", 2))
    assert "clouds" in KINDS
