"""One run, from a config to its run folder: the training loop (:mod:`~utae.training.engine`), the loaders of
a fold rotation (:mod:`~utae.training.loaders`), checkpoints and RNG states (:mod:`~utae.training.checkpoint`), the seed streams (:mod:`~utae.training.seeds`), the
arithmetic settings a run resumes under (:mod:`~utae.training.arithmetic`, :mod:`~utae.training.precision`),
official and initial weights (:mod:`~utae.training.weights`), several processes
(:mod:`~utae.training.distributed`), live curves (:mod:`~utae.training.tensorboard_log`) and
:func:`~utae.training.run.run` itself.

May import :mod:`utae.util`, :mod:`utae.models`, :mod:`utae.machine`, :mod:`utae.pastis`, :mod:`utae.perturb`,
:mod:`utae.config` and :mod:`utae.rundir`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
