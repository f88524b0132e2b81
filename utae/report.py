"""Report helpers: the tables of the notebooks, the study statistics, HTML rendering and the index page.

The study (``notebooks/compare.ipynb``), on the DataFrames of :mod:`utae.results`:
    :func:`study_summary` (written to ``results/summary.csv``), :func:`table_one` (train accuracy and
    val IoU without and with noise, per platform), :func:`platform_vs_seed` and
    :func:`platform_vs_seed_text` (is the platform difference larger than the seed spread?),
    :func:`load_bench` and :func:`bench_table` (``results/bench/*.csv`` side by side).
HTML:
    :func:`render_notebook_html` renders an executed notebook to a small self-contained page
    (figures inlined as PNG, code hidden by default); :func:`write_index` writes
    ``results/reports/index.html`` linking every report with relative links.
"""

from __future__ import annotations

import dataclasses
import html
import io
import math
import os
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utae.results import atomic_write_text, read_json

__all__ = [
    "format_value",
    "config_columns",
    "run_counts",
    "platform_settings",
    "study_summary",
    "table_one",
    "platform_vs_seed",
    "platform_vs_seed_text",
    "load_bench",
    "bench_table",
    "figure_png",
    "use_compact_figures",
    "render_notebook_html",
    "write_index",
]

def format_value(value: Any) -> str:
    """A config or platform value as short text for a table (lists as ``(a, b)``, floats with %g)."""
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# The study
# --------------------------------------------------------------------------------------------------

_EXTRA_CONFIG = ("cfg_noise_fraction", "cfg_noise_space", "cfg_noise_resample", "cfg_fold", "cfg_epochs",
                 "cfg_batch_size", "cfg_lr", "cfg_train_limit", "dataset")
_STUDY_METRICS = ("test_miou", "test_oa", "val_miou", "train_oa", "sec_per_epoch", "train_samples_per_s",
                  "eval_samples_per_s", "peak_mem_mb")


def _with_dataset(runs: pd.DataFrame) -> pd.DataFrame:
    if "cfg_dataset_root" in runs.columns and "dataset" not in runs.columns:
        runs = runs.assign(dataset=runs["cfg_dataset_root"].map(lambda p: Path(str(p)).name))
    return runs


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that define a configuration of the study: ``cfg_noise_std``, plus any of the
    fraction / space / fold / epochs / batch size / lr / train limit / dataset name that vary.

    Seeds and platforms are not configuration: they are what the study compares within a configuration.
    """
    runs = _with_dataset(runs)
    if "cfg_noise_std" not in runs.columns:
        raise ValueError(f"runs: missing column cfg_noise_std; got {list(runs.columns)}")
    cols = ["cfg_noise_std"]
    for col in _EXTRA_CONFIG:
        if col in runs.columns and runs[col].astype(str).nunique() > 1:
            cols.append(col)
    return cols


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """How many finished runs (seeds) each platform has at each training noise level."""
    if len(runs) == 0:
        raise ValueError("run_counts: no runs")
    table = runs.pivot_table(index="platform", columns="cfg_noise_std", values="run_id", aggfunc="count", fill_value=0)
    table.columns = [f"noise {float(c):g}" for c in table.columns]
    return table


#: ``platform.json`` fields that say how each platform's runs computed: hardware, software, precision, determinism.
_SETTINGS = (("plat_device_name", "device"), ("plat_torch_version", "torch"), ("plat_cuda_version", "CUDA"),
             ("plat_amp", "amp"), ("plat_float32_math", "float32 math"), ("plat_deterministic", "deterministic"),
             ("plat_deterministic_warn_only", "deterministic (warn only)"), ("plat_channels_last", "channels last"),
             ("plat_compile", "compile"), ("plat_world_size", "processes"), ("plat_torch_threads", "torch threads"))


def platform_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per platform: its device, software, and the precision and determinism settings its runs used
    (``platform.json``). Where runs of a platform differ, the cell lists every value; a field that no run
    recorded is left empty (but float32 math on a CPU is always IEEE). ``deterministic`` False means
    ``cudnn.benchmark`` picked the fastest kernels."""
    if len(runs) == 0:
        raise ValueError("platform_settings: no runs")

    def values(series: pd.Series) -> str:
        seen = sorted({format_value(v) for v in series if isinstance(v, (list, tuple)) or not pd.isna(v)})
        return ", ".join(seen)

    if "plat_device_kind" in runs.columns:  # float32 on a CPU is IEEE (runs older than the field lack it)
        recorded = runs.get("plat_float32_math", pd.Series(None, index=runs.index, dtype=object))
        on_gpu = runs["plat_device_kind"] != "cpu"
        runs = runs.assign(plat_float32_math=recorded.where(recorded.notna() | on_gpu, "ieee"))
    present = [(col, label) for col, label in _SETTINGS if col in runs.columns]
    grouped = runs.groupby("platform")
    out = grouped.size().rename("runs").to_frame()
    for col, label in present:
        out[label] = grouped[col].agg(values)
    return out


def study_summary(runs: pd.DataFrame, metrics: Sequence[str] = _STUDY_METRICS) -> pd.DataFrame:
    """One row per (platform, configuration): the number of runs, the seeds, and the mean and std
    over seeds of each metric (columns ``<metric>_mean``, ``<metric>_std``). This is ``summary.csv``.
    """
    if len(runs) == 0:
        raise ValueError("study_summary: no runs")
    runs = _with_dataset(runs)
    keys = ["platform", *config_columns(runs)]
    present = [m for m in metrics if m in runs.columns]
    grouped = runs.groupby(keys, dropna=False)
    out = grouped.size().rename("n_runs").to_frame()
    if "cfg_seed" in runs.columns:
        out["seeds"] = grouped["cfg_seed"].agg(lambda s: " ".join(str(v) for v in sorted(s)))
    for metric in present:
        out[f"{metric}_mean"] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std(ddof=1)
    return out.reset_index()


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.3f} (n=1)"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (n={len(values)})"


def table_one(runs: pd.DataFrame, metrics: Sequence[tuple[str, str]] = (("train_oa", "train accuracy"),
                                                                         ("val_miou", "val IoU"))) -> pd.DataFrame:
    """The layout of the study's Table I from our runs: one row a platform; for training without
    noise and for each training noise level, the train accuracy and the val mIoU, as
    ``mean ± std (n=seeds)``.

    Columns are a MultiIndex (condition, metric label); the condition is ``"without noise"`` for
    ``cfg_noise_std == 0`` and ``"with noise (std s)"`` otherwise.
    """
    if len(runs) == 0:
        raise ValueError("table_one: no runs")
    table: dict[tuple[str, str], dict[str, str]] = {}
    for level in sorted(runs["cfg_noise_std"].unique()):
        cond = "without noise" if float(level) == 0.0 else f"with noise (std {float(level):g})"
        sub = runs[runs["cfg_noise_std"] == level]
        for col, label in metrics:
            if col not in runs.columns:
                continue
            table[(cond, label)] = {plat: _mean_std(g[col]) for plat, g in sub.groupby("platform")}
    out = pd.DataFrame(table)
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["training", "score"])
    out.index.name = "platform"
    return out.fillna("")


def _anova_f(values: np.ndarray, groups: np.ndarray) -> float:
    """One-way ANOVA F statistic of ``values`` grouped by the integer labels ``groups``."""
    labels = np.unique(groups)
    n, k = len(values), len(labels)
    grand = values.mean()
    between = sum(((groups == g).sum()) * (values[groups == g].mean() - grand) ** 2 for g in labels)
    within = sum(((values[groups == g] - values[groups == g].mean()) ** 2).sum() for g in labels)
    if k < 2 or n - k < 1:
        return math.nan
    if within == 0:
        return math.inf if between > 0 else math.nan
    return float((between / (k - 1)) / (within / (n - k)))


def platform_vs_seed(
    runs: pd.DataFrame,
    metric: str = "test_miou",
    n_permutations: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Within each configuration, compare the difference between platforms with the spread between seeds.

    For every configuration (see :func:`config_columns`), with ``runs`` grouped by platform:

    - ``platform_means``: the mean over seeds of each platform;
    - ``platform_range``: the largest minus the smallest platform mean;
    - ``seed_std``: the pooled within-platform standard deviation over seeds (ddof=1);
    - ``range_over_seed_std``: their ratio;
    - ``F``: the one-way ANOVA F statistic (between-platform over within-platform variance);
    - ``p_perm``: a permutation p-value of F (platform labels shuffled over the runs of the
      configuration, ``n_permutations`` times; ``(1 + #{F* >= F}) / (1 + n)``). With few seeds the
      smallest reachable p-value is coarse (2 platforms x 3 seeds: 1/10).

    With a single platform only ``seed_std`` is defined; the other columns are NaN.
    """
    if len(runs) == 0:
        raise ValueError("platform_vs_seed: no runs")
    if metric not in runs.columns:
        raise ValueError(f"platform_vs_seed: no column {metric!r} in runs")
    runs = _with_dataset(runs)
    keys = config_columns(runs)
    rng = np.random.default_rng(seed)
    rows = []
    for key, sub in runs.groupby(keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        sub = sub.dropna(subset=[metric])
        values = sub[metric].to_numpy(dtype=float)
        plats, groups = np.unique(sub["platform"].to_numpy(), return_inverse=True)
        means = {p: float(values[groups == i].mean()) for i, p in enumerate(plats)}
        dof = len(values) - len(plats)
        ss_within = sum(((values[groups == i] - values[groups == i].mean()) ** 2).sum() for i in range(len(plats)))
        seed_std = math.sqrt(ss_within / dof) if dof > 0 else math.nan
        row: dict[str, Any] = dict(zip(keys, key))
        row.update(n_platforms=len(plats), n_runs=len(values),
                   platform_means="; ".join(f"{p}: {m:.4f}" for p, m in means.items()), seed_std=seed_std)
        if len(plats) >= 2:
            prange = max(means.values()) - min(means.values())
            f_obs = _anova_f(values, groups)
            p_perm = math.nan
            if math.isfinite(f_obs) or f_obs == math.inf:
                count = 0
                for _ in range(n_permutations):
                    f_perm = _anova_f(values, rng.permutation(groups))
                    count += bool(f_perm >= f_obs) if not math.isnan(f_perm) else 0
                p_perm = (1 + count) / (1 + n_permutations)
            row.update(platform_range=prange,
                       range_over_seed_std=prange / seed_std if seed_std and math.isfinite(seed_std) else math.nan,
                       F=f_obs, p_perm=p_perm)
        else:
            row.update(platform_range=math.nan, range_over_seed_std=math.nan, F=math.nan, p_perm=math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def platform_vs_seed_text(table: pd.DataFrame, metric: str = "test mIoU", alpha: float = 0.05) -> str:
    """A short, plain reading of :func:`platform_vs_seed`'s table, as Markdown."""
    if len(table) == 0:
        return "No runs to compare."
    n_configs = len(table)
    max_plat = int(table["n_platforms"].max())
    seed_std = table["seed_std"].dropna()
    spread = (f"the seed standard deviation of {metric} ranges from {seed_std.min():.4f} to {seed_std.max():.4f}"
              if len(seed_std) else "no configuration has two seeds on one platform, so even the seed spread "
              "cannot be measured")
    if max_plat < 2:
        return (f"All runs come from one platform, so only the spread between seeds can be measured: {spread} "
                f"over the {n_configs} configuration(s). Copy the `results/runs/<platform>/` folder of another "
                "machine next to this one and re-render to compare platforms.")
    comparable = table[table["n_platforms"] >= 2]
    p = comparable["p_perm"]
    n_sig = int((p <= alpha).sum())
    ratio = comparable["range_over_seed_std"].dropna()
    parts = [f"{len(comparable)} of {n_configs} configuration(s) were run on two or more platforms; {spread}."]
    if len(ratio):
        parts.append(f"The difference between platform means is {ratio.min():.2g} to {ratio.max():.2g} times "
                     "the seed standard deviation.")
    min_p = comparable["p_perm"].min()
    if n_sig:
        parts.append(f"At {n_sig} configuration(s) the permutation test puts the platform difference beyond "
                     f"what reshuffling seeds between platforms gives (p <= {alpha}); with this many runs per "
                     "cell, and one test per configuration, read that as a hint rather than a proof.")
    else:
        parts.append(f"At no configuration does the platform difference exceed what reshuffling the runs between "
                     f"platforms gives (smallest permutation p = {min_p:.3g}, threshold {alpha}): with these seeds, "
                     "the platforms are not distinguishable from seed-to-seed variation.")
    if comparable["n_runs"].min() <= 6:
        parts.append("With three seeds or fewer per platform the test has little power: a real but small platform "
                     "effect could go unseen.")
    return " ".join(parts)


def load_bench(bench_dir: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Every ``*.csv`` of ``bench_dir`` (e.g. ``results/bench``), by file stem; empty when there are none."""
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        return {}
    tables = {}
    for path in sorted(bench_dir.glob("*.csv")):
        try:
            tables[path.stem] = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ValueError(f"cannot read benchmark table {path}: {exc}") from exc
    return tables


_BENCH_VALUES = ("train_samples_per_s", "train_speedup", "eval_samples_per_s", "train_step_ms", "eval_ms",
                 "peak_mem_mb", "train_tflops")


def bench_table(tables: Mapping[str, pd.DataFrame], values: Sequence[str] | None = None) -> pd.DataFrame:
    """Benchmark tables side by side: one row a benchmark setting, one column group a measure with
    one column a platform.

    Each table's platform is its ``platform`` column when it has one, else its file stem. The
    non-numeric (and boolean) columns form the row index. ``values`` are the measures shown (default:
    the throughputs, step times, peak memory and TFLOP/s that are present, else every numeric column).
    """
    if not tables:
        raise ValueError("bench_table: no benchmark tables")
    frames = []
    for stem, df in tables.items():
        df = df.copy()
        if "platform" not in df.columns:
            df["platform"] = stem
        frames.append(df)
    data = pd.concat(frames, ignore_index=True)

    def is_measure(col: str) -> bool:
        return pd.api.types.is_numeric_dtype(data[col]) and not pd.api.types.is_bool_dtype(data[col])

    numeric = [c for c in data.columns if c != "platform" and is_measure(c)]
    keys = [c for c in data.columns if c != "platform" and c not in numeric]
    if values is None:
        values = [c for c in _BENCH_VALUES if c in numeric] or numeric
    else:
        unknown = [c for c in values if c not in numeric]
        if unknown:
            raise ValueError(f"bench_table: no numeric column(s) {unknown}; numeric columns: {numeric}")
    values = [c for c in values if data[c].notna().any()]
    if not values:
        return data
    if not keys:
        return data.groupby("platform")[values].mean().T
    data[keys] = data[keys].astype(str)
    return data.pivot_table(index=keys, columns="platform", values=values, aggfunc="mean")


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;max-width:1060px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}
h1,h2,h3{line-height:1.2}h1{font-size:1.7em}h2{font-size:1.3em;margin-top:1.6em;border-bottom:1px solid #ddd}
img{max-width:100%;height:auto}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:2px 7px;text-align:right;vertical-align:top}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;padding:.5em;overflow-x:auto;font-size:.85em}
.input_prompt,.output_prompt,.prompt{display:none}
.output_stderr pre{background:#fff5e6}.output_error pre{background:#fde8e8}
.anchor-link{display:none}
nav{font-size:.9em;margin-bottom:1em}
"""


def figure_png(fig: Any, colors: int = 256) -> bytes:
    """A matplotlib figure as a compact PNG: saved at the figure's dpi on white, cropped to its content,
    then reduced to an adaptive palette of ``colors`` colours (plots have few colours; about a third of
    the size of a full-colour PNG)."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", facecolor="white")
    if colors <= 0:
        return buf.getvalue()
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    small = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    small.save(out, format="PNG", optimize=True)
    return out.getvalue()


def use_compact_figures(shell: Any = None, colors: int = 256) -> None:
    """Show matplotlib figures in this IPython session as compact PNGs (:func:`figure_png`), so the
    HTML reports that inline them stay small. Call it after ``%matplotlib inline``."""
    from matplotlib.figure import Figure

    if shell is None:
        from IPython import get_ipython

        shell = get_ipython()
    if shell is None:
        raise RuntimeError("use_compact_figures needs an IPython session (a notebook kernel)")
    formatter = shell.display_formatter.formatters["image/png"]
    formatter.for_type(Figure, lambda fig: figure_png(fig, colors=colors))


def _page(title: str, body: str, nav: str = "") -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n</head>\n<body>\n{nav}{body}\n</body>\n</html>\n")


def _notebook_title(nb: Any, default: str) -> str:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#\s+(.+)$", cell.source, flags=re.M)
            if match:
                return match.group(1).strip()
    return default


def render_notebook_html(
    notebook: str | os.PathLike[str],
    html_path: str | os.PathLike[str],
    no_input: bool = True,
    title: str | None = None,
    index_href: str | None = None,
) -> Path:
    """Render an executed notebook to a small self-contained HTML page, written atomically.

    nbconvert's ``basic`` template renders the cells; the page adds a short stylesheet instead of
    the full JupyterLab one, so a report is mostly its inlined PNG figures.

    Args:
        notebook: the executed ``.ipynb``.
        html_path: where to write the page.
        no_input: hide the code cells' input (as ``nbconvert --no-input``), keeping their outputs.
        title: the page title; default the notebook's first Markdown heading.
        index_href: when given, a link back to the index at the top of the page.
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook, html_path = Path(notebook), Path(html_path)
    try:
        nb = nbformat.read(notebook, as_version=4)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read notebook {notebook}: {exc}") from exc
    exporter = HTMLExporter(template_name="basic")
    exporter.exclude_input = no_input
    exporter.exclude_input_prompt = True
    exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(nb)
    nav = f'<nav><a href="{html.escape(index_href)}">&larr; all reports</a></nav>\n' if index_href else ""
    atomic_write_text(html_path, _page(title or _notebook_title(nb, notebook.stem), body, nav))
    return html_path


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if not math.isfinite(value) else f"{value:.{digits}f}"


def write_index(results_dir: str | os.PathLike[str] = "results", title: str = "U-TAE noise study: reports") -> Path:
    """Write ``<results_dir>/reports/index.html``: links to the study report, ``summary.csv``, and
    every run report ``reports/<platform>/<run_id>.html``, with each run's headline scores when
    ``runs/<platform>/<run_id>/metrics.json`` is there. Links are relative, so the page works from
    a clone of the repository or a copied folder.
    """
    results_dir = Path(results_dir)
    reports = results_dir / "reports"
    runs_root = results_dir / "runs"
    parts = [f"<h1>{html.escape(title)}</h1>"]
    parts.append(f"<p>Written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.</p>")
    study = []
    if (reports / "compare.html").is_file():
        study.append('<li><a href="compare.html">The study: every run compared (compare.html)</a></li>')
    if (results_dir / "summary.csv").is_file():
        study.append('<li><a href="../summary.csv">summary.csv</a>: mean and std over seeds per platform and '
                     "configuration</li>")
    parts.append("<h2>Study</h2>\n<ul>" + "".join(study) + "</ul>" if study else
                 "<h2>Study</h2>\n<p>No study report yet (run <code>make report</code>).</p>")
    platforms = sorted(p for p in reports.iterdir() if p.is_dir()) if reports.is_dir() else []
    n_reports = 0
    for plat_dir in platforms:
        pages = sorted(plat_dir.glob("*.html"))
        if not pages:
            continue
        rows = []
        for page in pages:
            run_id = page.stem
            metrics_path = runs_root / plat_dir.name / run_id / "metrics.json"
            cells = ["", "", "", "", ""]
            if metrics_path.is_file():
                try:
                    m = read_json(metrics_path)
                    cfg_path = metrics_path.with_name("config.json")
                    cfg = read_json(cfg_path) if cfg_path.is_file() else {}
                except (OSError, ValueError):
                    m, cfg = {}, {}
                cells = [format_value(cfg.get("noise_std", "")), format_value(cfg.get("seed", "")),
                         _fmt((m.get("test") or {}).get("miou")), _fmt((m.get("test") or {}).get("oa")),
                         _fmt((m.get("timing") or {}).get("sec_per_epoch"), 2)]
            href = f"{plat_dir.name}/{page.name}"
            rows.append(f'<tr><td><a href="{html.escape(href)}">{html.escape(run_id)}</a></td>'
                        + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
            n_reports += 1
        parts.append(f"<h2>Runs on {html.escape(plat_dir.name)} ({len(pages)})</h2>\n<table>\n"
                     "<tr><th>run</th><th>training noise std</th><th>seed</th><th>test mIoU</th><th>test OA</th>"
                     "<th>s/epoch</th></tr>\n" + "\n".join(rows) + "\n</table>")
    if n_reports == 0:
        parts.append("<p>No run reports yet.</p>")
    out = reports / "index.html"
    atomic_write_text(out, _page(title, "\n".join(parts)))
    return out
