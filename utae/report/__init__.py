"""What people read: the figures (:mod:`~utae.report.plots`), notebooks rendered to HTML pages and the index
(:mod:`~utae.report.pages`), an imported run's page (:mod:`~utae.report.run_page`), the notebooks' one-call set-up
(:mod:`~utae.report.notebook`) and the corruption gallery (:mod:`~utae.report.gallery`).

Layer 7: may import every layer below but :mod:`utae.training`'s loop.
"""
