"""Report helpers: short text for table cells, compact figures, HTML rendering and the index page.

The study's tables and statistics are in :mod:`utae.study.tables` and :mod:`utae.study.platform_effect`.
HTML:
    :func:`render_notebook_html` renders an executed notebook to a small self-contained page
    (figures inlined as PNG, code hidden by default); :func:`write_index` writes
    ``results/reports/index.html`` linking every report with relative links.
"""

from __future__ import annotations

import errno
import html
import io
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from utae.util.format import format_value
from utae.util.atomic import atomic_write_text, read_json

__all__ = [
    "figure_png",
    "use_compact_figures",
    "render_notebook_html",
    "static_page",
    "write_index",
    "ReportWriteError",
    "write_error",
]


class ReportWriteError(OSError):
    """A page or notebook that could not be written (a full disk, say); the message is one line naming the file,
    the reason and what was kept (:func:`write_error`)."""


def write_error(exc: OSError, writing: str | os.PathLike[str], *kept: str | os.PathLike[str]) -> str:
    """One line for an OSError met while writing ``writing``: the file (the error's own when it names one), the
    reason, and that each of ``kept`` (written atomically) keeps its previous version, or was not written."""
    where = exc.filename or writing
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device (free some space and run it again)"
    previous = [f"the previous {k} is kept" if Path(k).exists() else f"{k} was not written" for k in kept]
    return "; ".join([f"cannot write {where}: {reason}", *previous])


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


#: The Content-Security-Policy of a page rendered from data (:func:`static_page`): no script, no frame, nothing
#: fetched from anywhere; images only inlined (``data:``), styles only the page's own.
STATIC_PAGE_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


def static_page(title: str, body: str, index_href: str | None = None) -> str:
    """A page in the reports' style for ``body`` (HTML whose text the caller escaped), with a
    Content-Security-Policy that forbids any script or outside resource (:data:`STATIC_PAGE_POLICY`): how a run
    imported from another machine is shown (:mod:`utae.report.run_page`). ``index_href``: a link back to the index."""
    nav = f'<nav><a href="{html.escape(index_href)}">&larr; all reports</a></nav>\n' if index_href else ""
    policy = f'<meta http-equiv="Content-Security-Policy" content="{html.escape(STATIC_PAGE_POLICY)}">\n'
    page = _page(title, body, nav)
    return page.replace('<meta charset="utf-8">\n', '<meta charset="utf-8">\n' + policy, 1)


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
    _write_page(html_path, _page(title or _notebook_title(nb, notebook.stem), body, nav))
    return html_path


def _write_page(path: Path, text: str) -> None:
    """Write a page atomically; an OSError (a full disk) becomes a :class:`ReportWriteError` naming it."""
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise ReportWriteError(write_error(exc, path, path)) from None


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
    _write_page(out, _page(title, "\n".join(parts)))
    return out
