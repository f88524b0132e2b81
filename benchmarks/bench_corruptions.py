"""The corruption suite on a clean-trained default point: the mIoU at every (kind, severity), and what the whole
test-time suite (7 kinds x 5 severities) costs relative to the point's own time.

One point of ``params/default.yaml`` with no training noise (seed 0 unless ``--seed``) is trained with
:func:`utae.training.engine.fit` on the synthetic default set (generated when missing), on one torch thread as in a
parallel sweep; its best weights are kept in ``--cache`` (a plain state dict, read back with
``weights_only=True``) so that a second call, and ``benchmarks.bench_padding``, skip the training. Then the test
fold is evaluated pad-free clean and at each (kind, severity) of :mod:`utae.perturb.corruptions`.

``python -m benchmarks.bench_corruptions [--epochs N] [--seed S] [--cache PATH] [--threads N]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.common import print_table

DEFAULT_CACHE = Path("data/bench_cache/default_point.pt")  # data/ is ignored by git


def default_point(seed: int = 0, epochs: int | None = None, sweep: str = "params/default.yaml") -> Any:
    """The :class:`utae.config.run_config.RunConfig` of the clean-trained point of ``sweep`` with ``seed`` (the dataset
    generated when missing); ``epochs`` overrides the sweep's."""
    from utae.config.run_config import RunConfig
    from utae.config.sweepfile import load_sweep
    from utae.pastis.synthetic import make_synthetic_pastis

    sw = load_sweep(sweep)
    point = next(p for p in sw.points if p.params.get("noise_std", 0.0) == 0.0 and p.params.get("seed") == seed)
    params = dict(point.params)
    if epochs is not None:
        params["epochs"] = epochs
    root = Path(str(params["dataset_root"]))
    if not root.is_dir():
        opts = sw.synthetic or {}
        make_synthetic_pastis(root, **{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
    keys = set(RunConfig.__dataclass_fields__)
    return RunConfig.from_dict({k: v for k, v in params.items() if k in keys})


def trained_default_point(seed: int = 0, epochs: int | None = None, cache: Path | None = DEFAULT_CACHE
                          ) -> tuple[torch.nn.Module, Any, Any, float, bool]:
    """``(model in eval mode on the CPU, config, splits, training seconds, cached)`` of the clean default point;
    the training seconds are those of this call's training, or the cached ones (``cached`` True)."""
    from utae.training.engine import build_engine, fit
    from utae.training.loaders import make_datasets, make_loader
    from utae.training.checkpoint import seed_everything

    config = default_point(seed, epochs)
    splits = make_datasets(config)
    cpu = torch.device("cpu")
    key = f"seed{seed}_ep{config.epochs}"
    path = None if cache is None else cache.with_name(f"{cache.stem}_{key}{cache.suffix}")
    seed_everything(config.seed)
    train_loader = make_loader(splits.train, batch_size=config.batch_size, train=True, seed=config.seed, device=cpu)
    engine = build_engine(config, cpu, None, steps_per_epoch=len(train_loader))
    if path is not None and path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        engine.raw.load_state_dict(blob["state"])
        seconds, cached = float(blob["seconds"]), True
    else:
        val_loader = make_loader(splits.val, batch_size=config.batch_size, train=False, seed=config.seed, device=cpu)
        start = time.perf_counter()
        state = fit(engine, train_loader, val_loader, epochs=config.epochs, seed=config.seed, progress=False)
        seconds, cached = time.perf_counter() - start, False
        engine.raw.load_state_dict(state.best_model)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            torch.save({"state": engine.raw.state_dict(), "seconds": torch.tensor(seconds)}, tmp)
            tmp.replace(path)
    return engine.raw.eval(), config, splits, seconds, cached


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_corruptions",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=None, help="override the sweep's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: as a point of a parallel sweep)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="evaluations per setting, each with another corruption draw (seeds seed, seed+1, ...): "
                             "the mIoU's mean and sd over the draws, and the least disturbed (minimum) time")
    parser.add_argument("--point-seconds", type=float, default=97.4,
                        help="a default point's end-to-end time to compare with (docs/benchmarks.md: 97.4 s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tqdm.auto import tqdm

    from utae.perturb.kinds import KINDS, SEVERITIES
    from utae.perturb.corruptions import corrupt_batch
    from utae.training.engine import evaluate_epoch
    from utae.training.loaders import make_loader
    from utae.pastis.metrics import scores

    model, config, splits, train_s, cached = trained_default_point(args.seed, args.epochs, args.cache)
    cpu = torch.device("cpu")
    loader = make_loader(splits.test, batch_size=config.batch_size, train=False, seed=config.seed, device=cpu)
    norm = (splits.test_mean, splits.test_std)
    rows = []

    def best(**kw: Any) -> tuple[Any, dict[str, float]]:
        """The fastest of ``--repeats`` evaluations (one per draw seed) and the mIoU/OA mean and sd over them."""
        runs = [evaluate_epoch(model, loader, cpu, seed=config.seed + r, **kw) for r in range(args.repeats)]
        sc = [scores(r.cm) for r in runs]
        miou, oa = np.array([x["miou"] for x in sc]), np.array([x["oa"] for x in sc])
        sd = (lambda a: float(a.std(ddof=1)) if len(a) > 1 else float("nan"))
        return min(runs, key=lambda r: r.seconds), {"miou": float(miou.mean()), "miou_sd": sd(miou),
                                                     "oa": float(oa.mean()), "oa_sd": sd(oa)}

    clean, c = best()
    padded, _ = best(eval_mode="padded_batches")
    rows.append({"kind": "clean", "severity": 0, **c, "seconds": clean.seconds})
    for kind, sev in tqdm([(k, s) for k in KINDS for s in SEVERITIES], desc="corruptions"):
        res, sc = best(corruption=(kind, sev), norm=norm)
        rows.append({"kind": kind, "severity": sev, **sc, "seconds": res.seconds})
    df = pd.DataFrame(rows)
    batches = list(loader)
    gen = []
    for kind in KINDS:
        start = time.perf_counter()
        for sev in SEVERITIES:
            for b in batches:
                corrupt_batch(b["image"], b["dates"], kind, sev, seed=config.seed, patch_ids=b["patch_id"],
                              norm=norm, pad_mask=b["pad_mask"])
        gen.append({"kind": kind, "generation_s_5_severities": time.perf_counter() - start})
    print_table(df)
    curve = df[df.kind != "clean"].pivot(index="kind", columns="severity", values="miou").reindex(list(KINDS))
    print(f"\nmIoU by kind and severity, mean over {args.repeats} draws (clean {c['miou']:.4f}):")
    print_table(curve.reset_index())
    print("sd of the mIoU over the draws:")
    print_table(df[df.kind != "clean"].pivot(index="kind", columns="severity", values="miou_sd")
                .reindex(list(KINDS)).reset_index())
    print("\ngenerating the corruptions alone (30 test patches, 5 severities):")
    print_table(pd.DataFrame(gen))
    suite_s = float(df[df.kind != "clean"]["seconds"].sum())
    noise_tests = len(set(config.test_noise_stds) | {0.0})
    point_s = train_s + noise_tests * clean.seconds
    print(f"\ntraining ({config.epochs} epochs, {args.threads} thread(s)): {train_s:.1f} s"
          f"{' (measured when the cache was made)' if cached else ''}")
    print(f"clean test of {len(splits.test)} patches: pad-free {clean.seconds:.2f} s, padded batches of "
          f"{config.batch_size} {padded.seconds:.2f} s")
    print(f"the point's time ~ training + {noise_tests} test evaluations = {point_s:.1f} s")
    print(f"corruption suite ({len(KINDS)} kinds x {len(SEVERITIES)} severities = {len(df) - 1} evaluations, the "
          f"fastest of {args.repeats} each): {suite_s:.1f} s = {suite_s / clean.seconds:.1f} clean test evaluations "
          f"= {100 * suite_s / point_s:.0f}% of the point above, {100 * suite_s / args.point_seconds:.0f}% of a "
          f"{args.point_seconds:g} s point")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
