"""Mock surveys with known truth: in memory (:func:`make_mock`) or streamed to HDF5
(:func:`write_mock_survey`).

Stars are generated in fixed blocks of :data:`BLOCK_SIZE`; block ``b`` draws from generators
seeded by ``SeedSequence(config.seed, spawn_key=(b, stream))`` (streams: population, label
noise, pixel noise and masks). Star ``i`` is therefore identical whatever the chunk size and
whatever ``n_stars`` (as long as it includes ``i``); the population does not depend on the
wavelength grid. The spectra in memory are bounded by one write chunk plus one block
(~400 MB at 7,514 pixels and ``chunk_size=1024``), whatever ``n_stars``; only the per-star
tables grow (~1.3 kB per star: the measured labels kept by the writer and the truth table,
both written whole at the end), e.g. ~520 MB peak for 100,000 stars.

Layout of a mock survey file (on top of the survey format of :mod:`stellarflow.io.hdf5`)::

    /flux, /ivar, /mask   noisy observed spectra; masked pixels keep their noisy flux and
                          have ivar = 0
    /labels               measured labels: star_id, TEFF, LOGG, FE_H, C_FE ... ND_FE,
                          VMICRO, VMACRO (noisy), each with *_ERR (reported 1-sigma), SNR
    /truth/flux           (n_stars, n_pixels) float32 noiseless flux
    /truth/labels         one row per star, same order:
        star_id
        TEFF, LOGG, FE_H, C_FE ... ND_FE    true values (C_FE, N_FE at the surface, after
                                            mixing; outliers' shifted abundances)
        VMICRO, VMACRO (km/s), RESOLUTION (LSF R), MASS (Msun), SNR (nominal continuum S/N),
        RV (km/s; moves only the sky-line residuals, spectra are rest-frame)
        EVOL_STATE ("RGB"/"RC"), POPULATION ("low_alpha"/"high_alpha"/"halo")
        C_FE_BIRTH, N_FE_BIRTH              before internal mixing
        A_CC, A_IA, A_AGB, A_ODD            process amplitudes (linear, Sun = 1)
        outlier_kind ("" for normal stars), outlier_amplitude (0..1; 0 for normal stars)
        PERSISTENCE (bool), N_MASKED (int)
        log_prob_oracle                     log p(observed flux | noiseless flux) with the
                                            saved ivar, over unmasked pixels, nats
    /truth/linelist       every line that reaches the grid, with ``withheld`` and the
                          formation columns (see stellarflow.mock.linelist)
    /linelist             the published list: the canonical columns (wavelength, species,
                          element, ion, loggf, chi) of the lines not withheld
    attrs["meta"]         JSON: survey="mock", mock_config, grid, processes (which
                          process feeds which element, with fractions), n_processes,
                          outlier kinds and shifts, reference star, noise model, layout
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
from astropy.table import Table, vstack

from stellarflow.data.dataset import SpectralDataset
from stellarflow.data.grid import grid_hash
from stellarflow.errors import DataValidationError
from stellarflow.mock.config import MockConfig
from stellarflow.mock.constants import (
    ABUNDANCE_ELEMENTS,
    PROCESS_VECTORS,
    PROCESSES,
    REFERENCE_STAR,
)
from stellarflow.mock.linelist import make_mock_linelist
from stellarflow.mock.noise import PERSISTENCE_RANGE, observe_spectra, oracle_log_prob
from stellarflow.mock.outliers import OUTLIER_SHIFTS
from stellarflow.mock.population import observe_labels, sample_population
from stellarflow.mock.spectra import SpectrumModel, StarParameters

__all__ = [
    "BLOCK_SIZE",
    "MockSurvey",
    "MockSurveySummary",
    "make_mock",
    "mock_metadata",
    "write_mock_survey",
]

logger = logging.getLogger(__name__)

BLOCK_SIZE: Final = 256
_STREAM_POPULATION, _STREAM_LABELS, _STREAM_PIXELS = 0, 1, 2
_PUBLISHED_COLUMNS: Final = ("wavelength", "species", "element", "ion", "loggf", "chi")
_MAX_IN_MEMORY: Final = 2_000_000_000  # bytes of spectra make_mock agrees to build

ProgressArg = bool | Callable[[int, int], object] | None


@dataclass(frozen=True)
class MockSurvey:
    """A mock survey in memory.

    Attributes:
        config: the configuration that made it.
        dataset: the observed survey (noisy flux, ivar, mask, measured labels, meta).
        truth: the truth table (module docstring), one row per star.
        truth_flux: `(n_stars, n_pixels)` float32 noiseless flux.
        linelist: every line reaching the grid, with ``withheld``.
        published_linelist: the canonical columns of the lines not withheld.
    """

    config: MockConfig
    dataset: SpectralDataset
    truth: Table
    truth_flux: np.ndarray
    linelist: Table
    published_linelist: Table

    @property
    def meta(self) -> dict[str, Any]:
        """The metadata stored with the survey."""
        return self.dataset.meta


@dataclass(frozen=True)
class MockSurveySummary:
    """What :func:`write_mock_survey` wrote.

    Attributes:
        path: the survey file.
        n_stars, n_pixels, n_lines, n_withheld: sizes.
        outlier_counts: kind -> number of stars.
        masked_fraction: fraction of masked pixels over all stars.
        median_snr: median of the stars' nominal S/N.
        wall_time_s: seconds spent generating and writing.
    """

    path: Path
    n_stars: int
    n_pixels: int
    n_lines: int
    n_withheld: int
    outlier_counts: dict[str, int] = field(default_factory=dict)
    masked_fraction: float = 0.0
    median_snr: float = 0.0
    wall_time_s: float = 0.0


@dataclass(frozen=True)
class _Block:
    truth: Table
    labels: Table
    truth_flux: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    mask: np.ndarray


def _rng(seed: int, block: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block, stream)))


def mock_metadata(config: MockConfig, linelist: Table) -> dict[str, Any]:
    """JSON-serialisable description of a mock (stored as the survey's ``meta``)."""
    wavelength = config.wavelength()
    feeds = {
        p: sorted(e for e in (*ABUNDANCE_ELEMENTS, "Fe") if PROCESS_VECTORS[e][p] > 0)
        for p in PROCESSES
    }
    return {
        "survey": "mock",
        "mock_config": config.to_dict(),
        "grid": {
            "kind": "apogee" if config.n_pixels is None else "apogee_subrange",
            "pixel_offset": 0 if config.n_pixels is None else int(config.pixel_offset),
            "n_pixels": int(wavelength.size),
            "wavelength_range": [float(wavelength[0]), float(wavelength[-1])],
            "grid_hash": grid_hash(wavelength),
        },
        "processes": {e: dict(PROCESS_VECTORS[e]) for e in (*ABUNDANCE_ELEMENTS, "Fe")},
        "process_elements": feeds,
        "n_processes": len(PROCESSES),
        "outlier_kinds": list(config.outlier_kinds),
        "outlier_shifts": {
            k: {e: list(r) for e, r in v.items()} for k, v in OUTLIER_SHIFTS.items()
        },
        "reference_star": dict(REFERENCE_STAR),
        "n_lines": len(linelist),
        "n_withheld": int(np.sum(linelist["withheld"])),
        "noise_model": "photon-like: sigma = sqrt(max(truth_flux, 0.05)) / (SNR * throughput "
        "* chip gain); Gaussian, ivar = 1 / sigma^2",
        "persistence_range": list(PERSISTENCE_RANGE),
        "block_size": BLOCK_SIZE,
        "truth_tables": ["truth/labels", "truth/linelist"],
        "published_linelist": "linelist",
    }


class _MockGenerator:
    """Everything fixed for one config (grid, line list, profiles) and the block recipe."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.wavelength = config.wavelength()
        full = make_mock_linelist(
            config.linelist_seed,
            withheld_fraction=config.withheld_fraction,
            withheld_elements=config.withheld_elements,
        )
        self.model = SpectrumModel(full, self.wavelength)
        self.linelist = self.model.linelist
        published = self.linelist[~np.asarray(self.linelist["withheld"], dtype=bool)]
        self.published = published[list(_PUBLISHED_COLUMNS)]
        self.published.meta = {"medium": "vacuum"}
        self.meta = mock_metadata(config, self.linelist)

    @property
    def n_blocks(self) -> int:
        return -(-self.config.n_stars // BLOCK_SIZE)

    def block(self, index: int) -> _Block:
        """Stars ``index * BLOCK_SIZE ...`` (a full block is generated, then trimmed)."""
        config = self.config
        start = index * BLOCK_SIZE
        n = min(BLOCK_SIZE, config.n_stars - start)
        truth = sample_population(
            config, _rng(config.seed, index, _STREAM_POPULATION), BLOCK_SIZE, start=start
        )
        labels = observe_labels(
            truth, _rng(config.seed, index, _STREAM_LABELS), noise=config.label_noise
        )
        truth_flux = self.model.flux(StarParameters.from_labels(truth)).astype(np.float32)
        observed = observe_spectra(
            truth_flux,
            self.wavelength,
            np.asarray(truth["SNR"]),
            np.asarray(truth["RV"]),
            _rng(config.seed, index, _STREAM_PIXELS),
            bad_pixels_per_star=config.bad_pixels_per_star,
            persistence_fraction=config.persistence_fraction,
            sky_residual_probability=config.sky_residual_probability,
        )
        truth["PERSISTENCE"] = observed.persistence
        truth["N_MASKED"] = observed.mask.sum(axis=1).astype(np.int64)
        truth["log_prob_oracle"] = oracle_log_prob(
            observed.flux, truth_flux, observed.ivar, observed.mask
        )
        return _Block(
            truth=truth[:n],
            labels=labels[:n],
            truth_flux=truth_flux[:n],
            flux=observed.flux[:n],
            ivar=observed.ivar[:n],
            mask=observed.mask[:n],
        )

    def blocks(self) -> Iterator[_Block]:
        for index in range(self.n_blocks):
            yield self.block(index)


def _progress_callback(progress: ProgressArg, total: int) -> tuple[Callable[[int], None], Any]:
    """Turn the ``progress`` argument into ``update(n_new)`` and a closer."""
    if progress is None or progress is False:
        return (lambda _n: None), None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="star", desc="mock survey")
        return bar.update, bar
    if not callable(progress):
        raise DataValidationError(
            f"progress must be a bool, None or a callable(n_done, n_total), got "
            f"{type(progress).__name__}"
        )
    done = [0]

    def update(n_new: int) -> None:
        done[0] += n_new
        progress(done[0], total)

    return update, None


def make_mock(config: MockConfig) -> MockSurvey:
    """Generate a whole mock survey in memory (for small configs and tests).

    Args:
        config: the mock's configuration.

    Returns:
        The survey, its truth and line lists.

    Raises:
        DataValidationError: if the spectra would exceed ~2 GB; use
            :func:`write_mock_survey` for large mocks.
    """
    size = config.n_stars * config.grid_pixels * 13
    if size > _MAX_IN_MEMORY:
        raise DataValidationError(
            f"a {config.n_stars} x {config.grid_pixels} mock needs ~{size / 1e9:.1f} GB in "
            "memory; stream it to disk with stellarflow.mock.write_mock_survey"
        )
    generator = _MockGenerator(config)
    blocks = list(generator.blocks())
    dataset = SpectralDataset(
        np.concatenate([b.flux for b in blocks]),
        np.concatenate([b.ivar for b in blocks]),
        generator.wavelength,
        vstack([b.labels for b in blocks]),
        mask=np.concatenate([b.mask for b in blocks]),
        meta=generator.meta,
    )
    return MockSurvey(
        config=config,
        dataset=dataset,
        truth=vstack([b.truth for b in blocks]),
        truth_flux=np.concatenate([b.truth_flux for b in blocks]),
        linelist=generator.linelist,
        published_linelist=generator.published,
    )


def write_mock_survey(
    path: str | os.PathLike[str],
    config: MockConfig,
    *,
    overwrite: bool = False,
    chunk_size: int = 1024,
    progress: ProgressArg = None,
) -> MockSurveySummary:
    """Generate a mock survey and stream it to an HDF5 survey file, atomically.

    Args:
        path: output file (``.h5``).
        config: the mock's configuration.
        overwrite: replace an existing file.
        chunk_size: stars per write (memory ~ ``chunk_size * n_pixels * 13`` bytes twice);
            the content does not depend on it.
        progress: True for a tqdm bar, a callable ``f(n_done, n_total)``, or None/False.

    Returns:
        A summary of what was written.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
        DataValidationError: for a chunk_size < 1 or a bad progress argument.
    """
    from stellarflow.io.hdf5 import SurveyWriter

    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise DataValidationError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    started = time.perf_counter()
    generator = _MockGenerator(config)
    update, bar = _progress_callback(progress, config.n_stars)
    truths: list[Table] = []
    pending: list[_Block] = []
    n_pending = n_masked = 0

    def flush(writer: SurveyWriter, n_rows: int) -> None:
        nonlocal pending, n_pending
        merged = _merge(pending)
        head, tail = _split(merged, n_rows)
        chunk = SpectralDataset(
            head.flux,
            head.ivar,
            generator.wavelength,
            head.labels,
            mask=head.mask,
            meta=generator.meta,
        )
        writer.append(chunk, truth_flux=head.truth_flux)
        pending = [tail] if tail is not None else []
        n_pending -= n_rows
        update(n_rows)

    try:
        with SurveyWriter(path, generator.wavelength, generator.meta, overwrite=overwrite) as w:
            for block in generator.blocks():
                truths.append(block.truth)
                n_masked += int(block.mask.sum())
                pending.append(block)
                n_pending += len(block.truth)
                while n_pending >= chunk_size:
                    flush(w, chunk_size)
            if n_pending:
                flush(w, n_pending)
            truth = vstack(truths)
            w.add_table("truth/labels", truth)
            w.add_table("truth/linelist", generator.linelist)
            w.add_table("linelist", generator.published)
    finally:
        if bar is not None:
            bar.close()
    kinds, counts = np.unique(np.asarray(truth["outlier_kind"]), return_counts=True)
    summary = MockSurveySummary(
        path=Path(path),
        n_stars=config.n_stars,
        n_pixels=int(generator.wavelength.size),
        n_lines=len(generator.linelist),
        n_withheld=int(np.sum(generator.linelist["withheld"])),
        outlier_counts={str(k): int(c) for k, c in zip(kinds, counts, strict=True) if k},
        masked_fraction=n_masked / (config.n_stars * generator.wavelength.size),
        median_snr=float(np.median(truth["SNR"])),
        wall_time_s=time.perf_counter() - started,
    )
    logger.info("mock survey: %s", summary)
    return summary


def _merge(blocks: list[_Block]) -> _Block:
    if len(blocks) == 1:
        return blocks[0]
    return _Block(
        truth=vstack([b.truth for b in blocks]),
        labels=vstack([b.labels for b in blocks]),
        truth_flux=np.concatenate([b.truth_flux for b in blocks]),
        flux=np.concatenate([b.flux for b in blocks]),
        ivar=np.concatenate([b.ivar for b in blocks]),
        mask=np.concatenate([b.mask for b in blocks]),
    )


def _split(block: _Block, n: int) -> tuple[_Block, _Block | None]:
    def part(sl: slice) -> _Block:
        return _Block(
            truth=block.truth[sl],
            labels=block.labels[sl],
            truth_flux=block.truth_flux[sl],
            flux=block.flux[sl],
            ivar=block.ivar[sl],
            mask=block.mask[sl],
        )

    rest = len(block.truth) - n
    return part(slice(0, n)), (part(slice(n, None)) if rest > 0 else None)
