"""The run folder ``results/<study>/runs/<platform>/<run_id>/``, its one owner: paths, the lock and the files a
finished run has (:mod:`~utae.rundir.paths`), the validating readers and consistency checks
(:mod:`~utae.rundir.readers`) and the same-run rule (:mod:`~utae.rundir.same_run`).

May import :mod:`utae.util`, :mod:`utae.pastis`, :mod:`utae.perturb`, :mod:`utae.machine` and :mod:`utae.config`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
