"""Matplotlib figures of stem4d results.

Each function takes xarray results and returns the figure; nothing here computes an
analysis. One module per topic; all functions are reachable as ``stem4d.plot.<name>``.
"""

from .bragg import show_peaks
from .bragg_vectors import show_bragg_vector_map
from .calibrate import show_ellipse, show_radial_background
from .com import show_com, show_orientation
from .origin import show_origin
from .probe import show_disk_measurement, show_kernel, show_probe
from .strain import show_basis, show_strain
from .virtual import position_detector, show_diffraction, show_image, show_images

__all__ = [
    "position_detector", "show_bragg_vector_map", "show_com", "show_diffraction",
    "show_disk_measurement", "show_ellipse", "show_image", "show_images", "show_kernel",
    "show_orientation", "show_origin", "show_peaks", "show_probe", "show_radial_background",
    "show_basis", "show_strain",
]
