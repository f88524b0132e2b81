"""Pad-free evaluation: a patch's prediction, and so the scores, do not depend on the evaluation batch.

U-TAE's L-TAE group-normalises over every time step of the batch, padded ones included, so in padded batches a
patch's logits depend on how much padding its batch needs. ``utae.training.engine.evaluate`` (``eval_mode="pad_free"``, the
default) runs each patch on its own real frames; these tests check that batch size 1 and 4, and another order,
give identical confusion matrices and losses, also under test noise and a corruption that changes the length.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Subset

from utae.perturb.kinds import KINDS
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.training.engine import EVAL_MODE, EVAL_MODES, evaluate
from utae.models.utae import UTAE
from utae.pastis.synthetic import make_synthetic_pastis

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


# --------------------------------------------------------------------------------------------------
# Same-length groups (eval_batch_size > 1)
# --------------------------------------------------------------------------------------------------


class _Recorder(torch.nn.Module):
    """Wraps the model and keeps, for every forward, its pad mask and each patch's input and logits."""

    def __init__(self, model: UTAE) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # evaluate() restores this mode on the wrapped model too
        self.masks: list[torch.Tensor] = []
        self.logits: dict[bytes, torch.Tensor] = {}

    def forward(self, x: torch.Tensor, batch_positions: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(x, batch_positions=batch_positions, pad_mask=pad_mask)
        self.masks.append(pad_mask.clone())
        for i in range(x.shape[0]):
            self.logits[x[i].numpy().tobytes()] = out[i].clone()
        return out


@pytest.mark.parametrize("kw", [{}, {"noise_std": 1.5, "seed": 2}, {"corruption": ("missing_dates", 4), "seed": 1}])
def test_grouped_scores_do_not_depend_on_the_loader_batch(dataset: PastisDataset, model: UTAE, kw: dict) -> None:
    """The groups are formed from the order of the patches alone, so the loader's batch size changes nothing:
    identical confusion matrices and identical losses (the same forwards, summed in the same order)."""
    cpu = torch.device("cpu")
    kw = dict(kw, eval_batch_size=4)
    if "corruption" in kw:
        kw["norm"] = (dataset.mean, dataset.std)
    cm1, loss1 = evaluate(model, _loader(dataset, 1), cpu, **kw)
    for batch_size in (3, 4):
        cm, loss = evaluate(model, _loader(dataset, batch_size), cpu, **kw)
        assert np.array_equal(cm, cm1) and loss == loss1, batch_size


def test_groups_hold_patches_of_one_length_without_padding(dataset: PastisDataset, model: UTAE) -> None:
    rec = _Recorder(model)
    cm, _ = evaluate(rec, _loader(dataset, 4), torch.device("cpu"), eval_batch_size=4)
    sizes = [m.shape[0] for m in rec.masks]
    assert cm.sum() == len(dataset) * SIZE * SIZE and sum(sizes) == len(dataset)
    assert not any(bool(m.any()) for m in rec.masks)  # no padded step reached the model
    assert max(sizes) <= 4 and max(sizes) > 1 and len(sizes) < len(dataset)  # grouped, never above the size


def test_grouping_changes_only_the_rounding(dataset: PastisDataset, model: UTAE) -> None:
    """One patch per forward against groups of 4: every patch's logits agree to float32 rounding, and only pixels
    whose two best logits are that close may change class.

    The tolerance sits between the two effects it separates. A grouped forward computes the same sums in
    another order (each conv and matmul sums fewer than 10^3 float32 terms of size ~1: its rounding is
    ~1e-7 relative per layer, ~1e-6 after twenty layers). A wrong group (a padded step, another patch's frame)
    changes the logits by the padding's effect, above 1e-4 of their scale (test_padded_batches_depend_on_the_padding).
    """
    cpu = torch.device("cpu")
    one, four = _Recorder(model), _Recorder(model)
    evaluate(one, _loader(dataset, 4), cpu, corruption=("missing_dates", 3), norm=(dataset.mean, dataset.std),
             eval_batch_size=1)
    evaluate(four, _loader(dataset, 4), cpu, corruption=("missing_dates", 3), norm=(dataset.mean, dataset.std),
             eval_batch_size=4)
    assert one.logits.keys() == four.logits.keys() and len(one.logits) == len(dataset)
    scale = max(float(v.abs().max()) for v in one.logits.values())
    tol = 1e-5 * scale
    for key, a in one.logits.items():
        b = four.logits[key]
        assert float((a - b).abs().max()) <= tol
        changed = a.argmax(0) != b.argmax(0)
        top2 = a.topk(2, dim=0).values
        assert bool(((top2[0] - top2[1])[changed] <= 2 * tol).all())


def test_pending_groups_stay_bounded() -> None:
    """Every length seen once, many lengths: the groups leave when size * _PENDING_GROUPS patches wait, so at most
    that many are held; every patch leaves exactly once, in groups of one length."""
    from utae.training.engine import _PENDING_GROUPS, _SameLengthGroups

    groups = _SameLengthGroups(3)
    out, most = [], 0
    for i, t in enumerate([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 5, 5, 6]):
        part = {"image": torch.full((1, t, 2, 4, 4), float(i)), "dates": torch.zeros(1, t),
                "pad_mask": torch.zeros(1, t, dtype=torch.bool), "mask": torch.zeros(1, 4, 4, dtype=torch.long)}
        out += groups.add(part)
        most = max(most, groups.n_pending)
    out += groups.flush()
    assert most < 3 * _PENDING_GROUPS and groups.n_pending == 0
    seen = sorted(float(v) for g in out for v in g["image"][:, 0, 0, 0, 0])
    assert seen == [float(i) for i in range(17)]
    assert all(g["image"].shape[0] <= 3 and g["dates"].shape[1] == g["image"].shape[1] for g in out)
    with pytest.raises(ValueError, match="eval_batch_size must be an int >= 1"):
        _SameLengthGroups(0)


# --------------------------------------------------------------------------------------------------
# ReplayLoader
# --------------------------------------------------------------------------------------------------


class _Counting(torch.utils.data.Dataset):
    def __init__(self, ds: PastisDataset) -> None:
        self.ds, self.reads = ds, 0

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return self.ds[i]


def test_replay_loader_reads_a_small_split_once(dataset: PastisDataset, model: UTAE) -> None:
    from utae.training.loaders import ReplayLoader

    counting = _Counting(dataset)
    loader = ReplayLoader(DataLoader(counting, batch_size=4, collate_fn=pad_collate))
    cpu = torch.device("cpu")
    first = evaluate(model, loader, cpu, eval_batch_size=4)
    again = evaluate(model, loader, cpu, eval_batch_size=4)
    assert counting.reads == len(dataset) and len(loader) == 3 and loader.dataset is counting
    assert np.array_equal(first[0], again[0]) and first[1] == again[1]
    plain = evaluate(model, DataLoader(dataset, batch_size=4, collate_fn=pad_collate), cpu, eval_batch_size=4)
    assert np.array_equal(first[0], plain[0]) and first[1] == plain[1]


def test_replay_loader_rereads_a_large_split_and_an_unfinished_pass(dataset: PastisDataset) -> None:
    from utae.training.loaders import ReplayLoader

    counting = _Counting(dataset)
    big = ReplayLoader(DataLoader(counting, batch_size=4, collate_fn=pad_collate), max_bytes=10_000)
    for _ in range(2):
        assert sum(b["image"].shape[0] for b in big) == len(dataset)
    assert counting.reads == 2 * len(dataset)  # over the bound: read on every pass
    counting.reads = 0
    small = ReplayLoader(DataLoader(counting, batch_size=4, collate_fn=pad_collate))
    next(iter(small))  # a pass left unfinished is not kept
    assert sum(b["image"].shape[0] for b in small) == len(dataset)
    assert sum(b["image"].shape[0] for b in small) == len(dataset)
    assert counting.reads == 4 + len(dataset)


def test_example_predictions_are_pad_free(dataset: PastisDataset, model: UTAE) -> None:
    """predictions.npz shows what the test scored: each example predicted alone on its own dates, whatever the
    lengths of the examples beside it (padded together, the shorter ones would get other logits)."""
    from utae.training.run import predict_examples

    cpu = torch.device("cpu")
    n = 6
    lengths = [len(dataset.dates(i)) for i in range(n)]
    assert len(set(lengths)) > 1  # the examples would need padding in one batch
    out = predict_examples(model, dataset, cpu, n=n, mean=dataset.mean, std=dataset.std)
    assert out["pred"].shape == (n, SIZE, SIZE) and out["rgb"].shape == (n, SIZE, SIZE, 3)
    for i in range(n):
        alone = pad_collate([dataset[i]])
        with torch.no_grad():
            want = model(alone["image"], batch_positions=alone["dates"], pad_mask=alone["pad_mask"]).argmax(1)[0]
        assert np.array_equal(out["pred"][i], want.numpy()) and np.array_equal(out["target"][i], dataset[i]["mask"])
        assert out["patch_id"][i] == dataset[i]["patch_id"]
    assert np.array_equal(predict_examples(model, dataset, cpu, n=2, mean=dataset.mean, std=dataset.std)["pred"],
                          out["pred"][:2])
