"""What machine a run ran on: the hardware and host read from /proc, DMI, the environment and
``nvidia-smi`` (:mod:`~utae.machine.probe`), and the run's platform record, its name and fingerprint, the device a
run resolves to and its peak memory (:mod:`~utae.machine.record`, ``platform.json``), and the host allocator's
setting for training (:mod:`~utae.machine.allocator`).

May import :mod:`utae.util` only.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
