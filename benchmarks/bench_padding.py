"""How much a patch's prediction depends on its batch's padding, and what pad-free evaluation changes.

U-TAE's L-TAE group-normalises over every time step of the batch, padded ones included (as the official code
does), so in a padded batch a patch's logits depend on how much padding its batch needs. For two models:

* the official widths with the reference weights' stand-in (``../shared/reference/utae_official/state_dict.npz``,
  :func:`utae.training.weights.load_official_weights`) on the test fold of a 60-patch synthetic set (32 x 32 px, 20 to 30
  dates, fold 1's rotation);
* a clean-trained default-study point (:func:`benchmarks.bench_corruptions.trained_default_point`, cached) on the
  default synthetic set's test fold,

it prints the largest logit change and the flipped pixels of padded batches of 4 (in the loader's order) against
one patch per forward, and the mIoU of padded batches of 4 in random order (as the official test script
evaluates, ``shuffle=True``; here without its ``drop_last``) over ``--orders`` orders, against pad-free.

``python -m benchmarks.bench_padding [--orders 20] [--epochs N] [--threads 2]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_corruptions import DEFAULT_CACHE, trained_default_point

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "utae_official" / "state_dict.npz"


@torch.no_grad()
def _logits(model: torch.nn.Module, items: list[dict]) -> list[torch.Tensor]:
    """Each patch alone on its real frames: ``[(20, H, W)]``."""
    from utae.pastis.dataset import pad_collate

    out = []
    for it in items:
        b = pad_collate([it])
        out.append(model(b["image"], batch_positions=b["dates"], pad_mask=b["pad_mask"])[0])
    return out


@torch.no_grad()
def _padded_logits(model: torch.nn.Module, items: list[dict], order: list[int], batch_size: int
                   ) -> dict[int, torch.Tensor]:
    """Padded batches of ``batch_size`` in ``order``: ``{item index: (20, H, W)}``."""
    from utae.pastis.dataset import pad_collate

    out = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        b = pad_collate([items[i] for i in idx])
        logits = model(b["image"], batch_positions=b["dates"], pad_mask=b["pad_mask"])
        out.update({i: logits[j] for j, i in enumerate(idx)})
    return out


def _miou(preds: list[torch.Tensor], items: list[dict]) -> float:
    from utae.pastis.classes import N_CLASSES
    from utae.pastis.metrics import confusion_matrix, scores

    cm = sum(confusion_matrix(p.argmax(0)[None], it["mask"][None], N_CLASSES) for p, it in zip(preds, items))
    return float(scores(cm.cpu())["miou"])


def measure(name: str, model: torch.nn.Module, items: list[dict], orders: int, batch_size: int = 4) -> None:
    model.eval()
    alone = _logits(model, items)
    padded = _padded_logits(model, items, list(range(len(items))), batch_size)
    diff = max(float((padded[i] - alone[i]).abs().max()) for i in range(len(items)))
    flips = sum(int((padded[i].argmax(0) != alone[i].argmax(0)).sum()) for i in range(len(items)))
    n_pix = sum(it["mask"].numel() for it in items)
    lengths = [it["image"].shape[0] for it in items]
    base = _miou(alone, items)
    rng = np.random.default_rng(0)
    deltas = []
    for _ in range(orders):
        order = rng.permutation(len(items)).tolist()
        p = _padded_logits(model, items, order, batch_size)
        deltas.append(_miou([p[i] for i in range(len(items))], items) - base)
    d = np.array(deltas)
    print(f"{name}: {len(items)} test patches of {min(lengths)} to {max(lengths)} dates, {n_pix:,} pixels")
    print(f"  padded batches of {batch_size} (loader order) vs one patch per forward: max |logit change| "
          f"{diff:.3g}, flipped pixels {flips:,} of {n_pix:,} ({100 * flips / n_pix:.3f}%)")
    print(f"  mIoU pad-free {base:.4f}; padded batches of {batch_size} in {orders} random orders: mIoU - pad-free "
          f"mean {d.mean():+.2e}, sd {d.std(ddof=1) if orders > 1 else 0.0:.2e}, "
          f"range [{d.min():+.2e}, {d.max():+.2e}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_padding", description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=20, help="random batch orders for the padded mIoU")
    parser.add_argument("--epochs", type=int, default=None, help="override the default point's epochs")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data", type=Path, default=Path("data/bench_padding_n60"),
                        help="where the 60-patch synthetic set is (generated when missing)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from utae.pastis.metadata import FOLD_ROTATIONS
    from utae.pastis.dataset import PastisDataset
    from utae.models.utae import UTAE
    from utae.pastis.synthetic import make_synthetic_pastis
    from utae.training.weights import load_official_weights

    if not args.data.is_dir():
        make_synthetic_pastis(args.data, n_patches=60, size=32, seed=0)
    train_folds, _, test_folds = FOLD_ROTATIONS[0]
    train = PastisDataset(args.data, folds=train_folds)
    test = PastisDataset(args.data, folds=test_folds, norm_stats=(train.mean, train.std))
    if REFERENCE.is_file():
        official = load_official_weights(UTAE(), REFERENCE)
        measure("official widths, reference weights' stand-in", official, [test[i] for i in range(len(test))],
                args.orders)
    else:
        print(f"(no {REFERENCE}: the official stand-in is skipped)")
    model, _, splits, _, _ = trained_default_point(0, args.epochs, args.cache)
    measure("clean-trained default point (seed 0)", model, [splits.test[i] for i in range(len(splits.test))],
            args.orders)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
