"""The Jupyter kernels that papermill starts: how they are configured.

ipykernel warns on stderr, for every kernel started over TCP without encryption, "Kernel is running over TCP
without encryption. All communication ... is sent in plain text": one such line per executed notebook (per sweep
point). The kernel manager can provision CurveZMQ keys instead (jupyter_client >= 8.10, for kernelspecs that
declare ``"supported_encryption": ["curve"]``, as ``ipykernel install`` writes): the kernel's sockets are then
encrypted, and it has nothing to warn about.

jupyter_client (8.x) shuts a kernel down by first interrupting it (SIGINT, ``KernelManager.shutdown_kernel``),
then sending the shutdown request on the control channel. ipykernel ignores SIGINT while idle but not while it
handles a shell message: when the interrupt lands there, the kernel logs ``[IPKernelApp] ERROR |
KeyboardInterrupt caught in kernel.`` on the inherited stderr, now and then one line a sweep point.
:class:`QuietShutdownKernelManager` sends no interrupt when shutting down: the shutdown request alone ends the
kernel (ipykernel handles it on its control thread); a kernel still running a cell (a timed-out point) is
terminated (SIGTERM) after half of ``shutdown_wait_time`` instead of being interrupted first.

:func:`kernel_config` is both settings, for ``papermill.execute_notebook(..., config=kernel_config())``.
"""

from __future__ import annotations

import zmq
from jupyter_client import AsyncKernelManager
from traitlets.config import Config

__all__ = ["QuietShutdownKernelManager", "kernel_config"]


class QuietShutdownKernelManager(AsyncKernelManager):
    """The kernel manager nbclient creates (``AsyncKernelManager``), less the interrupt it sends before a shutdown
    request (the source of ipykernel's "KeyboardInterrupt caught in kernel." line); interrupts asked for at any
    other time are sent as before."""

    async def _async_interrupt_kernel(self) -> None:
        if self.shutting_down:  # set by shutdown_kernel before it interrupts
            return
        await super()._async_interrupt_kernel()


def kernel_config() -> Config:
    """The traitlets configuration of the kernel manager that papermill (through nbclient) creates: a
    :class:`QuietShutdownKernelManager`, with CurveZMQ transport encryption where the kernelspec supports it
    (``auto``); ``disabled`` when this pyzmq has no CurveZMQ (jupyter_client refuses ``auto`` then, and the kernel
    warns as before)."""
    policy = "auto" if zmq.has("curve") else "disabled"
    return Config({"NotebookClient": {"kernel_manager_class": QuietShutdownKernelManager},
                   "KernelManager": {"transport_encryption": policy}})
