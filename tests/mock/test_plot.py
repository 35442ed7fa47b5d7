from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure

from stellarflow.errors import DataValidationError
from stellarflow.mock import MockSurvey
from stellarflow.plot.mock import plot_mock_population, plot_mock_spectra


def test_plot_mock_spectra(tmp_path: Path, small_mock: MockSurvey) -> None:
    data = small_mock.dataset
    figure = plot_mock_spectra(
        data.wavelength,
        data.flux[:3],
        small_mock.linelist,
        truth_flux=small_mock.truth_flux[:3],
        mask=data.mask[:3],
        labels=small_mock.truth[:3],
        n_zoom=2,
        zoom_width=15.0,
    )
    assert isinstance(figure, Figure)
    assert len(figure.axes) == 3
    figure.savefig(tmp_path / "spectra.png")
    assert (tmp_path / "spectra.png").stat().st_size > 10_000
    plt.close(figure)


def test_plot_mock_spectra_into_given_axes(small_mock: MockSurvey) -> None:
    data = small_mock.dataset
    figure, axes = plt.subplots(2, 1)
    out = plot_mock_spectra(
        data.wavelength,
        data.flux[:1],
        small_mock.published_linelist,
        zooms=[(15160.0, 15180.0)],
        axes=axes,
    )
    assert out is figure
    with pytest.raises(DataValidationError, match="axes"):
        plot_mock_spectra(
            data.wavelength,
            data.flux[:1],
            small_mock.linelist,
            zooms=[(15160.0, 15180.0)],
            axes=[axes[0]],
        )
    with pytest.raises(DataValidationError, match="pixels"):
        plot_mock_spectra(data.wavelength[:10], data.flux[:1], small_mock.linelist)
    plt.close("all")


def test_plot_mock_population(tmp_path: Path, small_mock: MockSurvey) -> None:
    figure = plot_mock_population(small_mock.truth)
    assert len(figure.axes) == 3  # two panels and a colour bar
    labels = [t.get_text() for t in figure.axes[1].get_legend().get_texts()]
    assert any("N_rich_C_poor" in text or "Ce_rich" in text for text in labels)
    figure.savefig(tmp_path / "population.png")
    with pytest.raises(DataValidationError, match="MG_FE"):
        plot_mock_population(small_mock.truth[["TEFF", "LOGG", "FE_H"]])
    plt.close("all")
