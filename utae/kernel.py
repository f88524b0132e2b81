"""The Jupyter kernels that papermill starts: how they are configured.

ipykernel warns on stderr, for every kernel started over TCP without encryption, "Kernel is running over TCP
without encryption. All communication ... is sent in plain text": one such line per executed notebook (per sweep
point). The kernel manager can provision CurveZMQ keys instead (jupyter_client >= 8.10, for kernelspecs that
declare ``"supported_encryption": ["curve"]``, as ``ipykernel install`` writes): the kernel's sockets are then
encrypted, and it has nothing to warn about. :func:`kernel_config` is that setting, for
``papermill.execute_notebook(..., config=kernel_config())``.
"""

from __future__ import annotations

import zmq
from traitlets.config import Config

__all__ = ["kernel_config"]


def kernel_config() -> Config:
    """The traitlets configuration of the kernel manager that papermill (through nbclient) creates: CurveZMQ
    transport encryption where the kernelspec supports it (``auto``); ``disabled`` when this pyzmq has no
    CurveZMQ (jupyter_client refuses ``auto`` then, and the kernel warns as before)."""
    policy = "auto" if zmq.has("curve") else "disabled"
    return Config({"KernelManager": {"transport_encryption": policy}})
