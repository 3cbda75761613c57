"""Figures: each plot function returns a figure showing what it was given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import stem4d as s4  # noqa: E402


@pytest.fixture(scope="module")
def cube():
    cube, _ = s4.simulate.crystal((6, 7), (32, 32), disk_radius=2.5, g1=(7.0, 1.0),
                                  g2=(-1.0, 8.0), r_step=2.0, q_pixel_size=0.05)
    return cube


def test_show_diffraction_draws_each_detector(cube):
    dp = s4.virtual_diffraction(cube, "mean")
    bf = s4.detectors.circle(cube, radius=0.15)
    adf = s4.detectors.annulus(cube, radii=(0.3, 0.7))
    fig = s4.plot.show_diffraction(dp, detectors={"BF": bf, "ADF": adf})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["BF", "ADF"]
    assert ax.get_xlabel() == "qy (1/Å)" and ax.get_ylabel() == "qx (1/Å)"
    image = ax.get_images()[0].get_array()
    np.testing.assert_allclose(image, np.log1p(dp.values - dp.values.min()), rtol=1e-6)
    left, right, bottom, top = ax.get_images()[0].get_extent()
    assert left == pytest.approx(float(dp.qy[0]) - 0.025)
    assert bottom == pytest.approx(float(dp.qx[-1]) + 0.025)
    plt.close(fig)


def test_show_images_one_panel_per_image(cube):
    images = s4.virtual_image(cube, {"bf": s4.detectors.circle(cube, radius=0.15),
                                     "adf": s4.detectors.annulus(cube, radii=(0.3, 0.7))})
    fig = s4.plot.show_images(images)
    titles = [ax.get_title() for ax in fig.axes if ax.get_images()]
    assert titles == ["bf", "adf"]
    np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(), images.bf.values)
    assert fig.axes[0].get_xlabel() == "ry (Å)"
    plt.close(fig)
    with pytest.raises(ValueError, match=r"no \(rx, ry\) variable"):
        s4.plot.show_images(images.drop_vars(["bf", "adf"]))
