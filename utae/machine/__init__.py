"""What machine a run ran on: the hardware and host read from /proc, DMI, the environment and
``nvidia-smi`` (:mod:`~utae.machine.probe`), and the run's platform record, its name and fingerprint, the device a
run resolves to and its peak memory (:mod:`~utae.machine.record`, ``platform.json``).

Layer 3: may import :mod:`utae.util` only.
"""
