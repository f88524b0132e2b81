"""What a study does to the input images: Gaussian noise (:mod:`~utae.perturb.noise`), the corruption suite's
vocabulary, kinds, severities and config values (:mod:`~utae.perturb.kinds`, torch-free), the corruption kernels
(:mod:`~utae.perturb.corruptions`) and the training-time dataset wrappers that apply them to a fraction of the
samples (:mod:`~utae.perturb.wrappers`).

May import :mod:`utae.util` and :mod:`utae.pastis`.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
