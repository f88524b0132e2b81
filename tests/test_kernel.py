"""utae.kernel: a notebook executed through papermill prints no kernel warning about unencrypted TCP."""

from __future__ import annotations

from pathlib import Path

import nbformat
import papermill
import pytest
import zmq

from utae.kernel import kernel_config

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
