"""utae.sweep.kernel: a notebook executed through papermill prints no kernel warning about unencrypted TCP; a kernel is
shut down without being interrupted first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nbformat
import papermill
import pytest
import zmq
from jupyter_client import AsyncKernelManager

from utae.sweep.kernel import QuietShutdownKernelManager, kernel_config

WARNING = "Kernel is running over TCP without encryption"


def _execute(tmp_path: Path, **kwargs) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 6 * 7\nprint(x)")]
    nbformat.write(nb, tmp_path / "in.ipynb")
    # kernel "python3": the kernelspec that make venv installs into the virtual environment (the sweep's kernel)
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, log_output=False, cwd=str(tmp_path), **kwargs)
    return nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs[0]["text"].strip()


@pytest.mark.slow
def test_the_kernel_warning_is_gone_and_the_notebook_still_runs(tmp_path: Path, capfd) -> None:
    # The kernel is a child process writing to the inherited stderr: capfd (file descriptors) sees its lines.
    assert _execute(tmp_path) == "42"
    assert WARNING in capfd.readouterr().err  # without the setting: the warning of every point
    if not zmq.has("curve"):
        pytest.fail("this pyzmq has no CurveZMQ: kernel_config() cannot silence the warning here")
    assert _execute(tmp_path, config=kernel_config()) == "42"
    err = capfd.readouterr().err
    assert WARNING not in err, err


def test_the_setting_names_the_kernel_managers_policy() -> None:
    config = kernel_config()
    assert config.KernelManager.transport_encryption == ("auto" if zmq.has("curve") else "disabled")


async def _signals_seen_at_shutdown(manager_class: type[AsyncKernelManager], marker: Path) -> str:
    """Start a kernel, run a cell that appends a line to ``marker`` at each SIGINT while it sleeps, shut the kernel
    down mid-cell and return what the cell wrote. (An idle ipykernel ignores SIGINT: only a busy one shows it.)"""
    km = manager_class(kernel_name="python3", shutdown_wait_time=1.0)  # SIGTERM 0.5 s after the shutdown request
    await km.start_kernel(cwd=str(marker.parent))
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        kc.execute("import signal, time\n"
                   f"signal.signal(signal.SIGINT, lambda *a: open({str(marker)!r}, 'a').write('SIGINT\\n'))\n"
                   "print('running', flush=True)\n"
                   "time.sleep(60)")
        while True:  # the cell has set its handler once it prints
            msg = await kc.get_iopub_msg(timeout=60)
            if msg["msg_type"] == "stream" and "running" in msg["content"]["text"]:
                break
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    return marker.read_text() if marker.exists() else ""


@pytest.mark.slow
def test_a_kernel_is_shut_down_without_an_interrupt(tmp_path: Path) -> None:
    # jupyter_client's own manager interrupts first (the source of "KeyboardInterrupt caught in kernel.")
    assert asyncio.run(_signals_seen_at_shutdown(AsyncKernelManager, tmp_path / "plain.txt")) == "SIGINT\n"
    assert asyncio.run(_signals_seen_at_shutdown(QuietShutdownKernelManager, tmp_path / "quiet.txt")) == ""


def test_papermill_gets_the_quiet_manager() -> None:
    assert kernel_config().NotebookClient.kernel_manager_class is QuietShutdownKernelManager
