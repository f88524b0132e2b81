"""The segmentation models and their registry: every model maps a series ``x (B, T, C, H, W)`` with its
dates ``batch_positions (B, T)`` and ``pad_mask (B, T)`` to logits ``(B, K, H, W)``
(:mod:`~utae.models.registry`: :func:`create_model`, :func:`list_models`, the protocol). U-TAE is split into its
parts as the official code names them: hand-written autograd ops (:mod:`~utae.models.ops`), convolution blocks
(:mod:`~utae.models.blocks`), the L-TAE (:mod:`~utae.models.ltae`) and the U-Net around it
(:mod:`~utae.models.utae`).

May import :mod:`utae.util` only. The registry itself is torch-free.
The table of layers: docs/package.md (checked by tests/test_layers.py).
"""
