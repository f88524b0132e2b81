"""One run, from a config to its run folder: the training loop (:mod:`~utae.training.engine`), the loaders of
a fold rotation (:mod:`~utae.training.loaders`), checkpoints and RNG states (:mod:`~utae.training.checkpoint`), the
arithmetic settings a run resumes under (:mod:`~utae.training.arithmetic`, :mod:`~utae.training.precision`),
official and initial weights (:mod:`~utae.training.weights`), several processes
(:mod:`~utae.training.distributed`), live curves (:mod:`~utae.training.tensorboard_log`) and
:func:`~utae.training.run.run` itself.

Layer 6: may import every layer below (util, pastis, perturb, models, machine, config, rundir).
"""
