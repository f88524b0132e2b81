"""Many runs read together: every run of a results folder as DataFrames (:mod:`~utae.study.runs`), the
comparison's tables (:mod:`~utae.study.tables`), the corruption scores (:mod:`~utae.study.corruption_scores`),
the platform effect (:mod:`~utae.study.platform_effect`), the seed streams' shares (:mod:`~utae.study.seed_streams`) and the one loader the compare notebook calls
(:mod:`~utae.study.loading`). Statistics come from scipy and statsmodels.

May import :mod:`utae.util`, :mod:`utae.pastis`, :mod:`utae.perturb.kinds`, :mod:`utae.config` and
:mod:`utae.rundir`; never :mod:`utae.training`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
