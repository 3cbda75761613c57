"""Matplotlib figures of stem4d results.

Each function takes xarray results and returns the figure; nothing here computes an
analysis. One module per topic; all functions are reachable as ``stem4d.plot.<name>``.
"""

from .virtual import position_detector, show_diffraction, show_image, show_images

__all__ = ["position_detector", "show_diffraction", "show_image", "show_images"]
