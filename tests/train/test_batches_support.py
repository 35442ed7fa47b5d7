"""Block split, shuffled batches and the label-support test."""

from __future__ import annotations

import numpy as np
import pytest

from stellarflow.errors import DataValidationError
from stellarflow.io.hdf5 import open_survey, write_survey
from stellarflow.train.batches import iter_batches, split_blocks
from stellarflow.train.config import TrainConfig
from stellarflow.train.support import LabelSupport, fit_support
from tests.conftest import make_dataset


def test_split_covers_every_star_once() -> None:
    train, val = split_blocks(1000, 64, 0.1, seed=3)
    rows = np.concatenate([np.arange(a, b) for a, b in np.concatenate([train, val])])
    np.testing.assert_array_equal(np.sort(rows), np.arange(1000))
    assert 0.05 < sum(b - a for a, b in val) / 1000 < 0.2
    again, _ = split_blocks(1000, 64, 0.1, seed=3)
    np.testing.assert_array_equal(train, again)


def test_batches_same_from_memory_and_file(tmp_path) -> None:
    data = make_dataset(n_stars=100, n_pixels=8, masked_fraction=0.05)
    path = write_survey(data, tmp_path / "s.h5")
    train, _ = split_blocks(data.n_stars, 16, 0.2, seed=0)
    names = ["TEFF", "LOGG"]

    def collect(source):
        rng = np.random.default_rng(5)
        return list(iter_batches(source, train, 7, names, rng=rng, blocks_per_buffer=3))

    with open_survey(path) as survey:
        from_file = collect(survey)
    from_memory = collect(data)
    assert len(from_file) == len(from_memory)
    for a, b in zip(from_file, from_memory, strict=True):
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.flux, b.flux)
    rows = np.concatenate([b.rows for b in from_memory])
    assert len(np.unique(rows)) == len(rows)  # no star twice in an epoch
    expected = np.concatenate([np.arange(a, b) for a, b in train])
    np.testing.assert_array_equal(np.sort(rows), expected)
    np.testing.assert_allclose(
        from_memory[0].labels[:, 0], data.labels["TEFF"][from_memory[0].rows]
    )
    assert all(len(b) == 7 for b in from_memory[:-1])


def test_batches_skip_bad_stars() -> None:
    data = make_dataset(n_stars=40, n_pixels=8, masked_fraction=0.0)
    data.labels["TEFF"][3] = np.nan
    data.mask[5, :6] = True
    data.ivar[5, :6] = 0
    blocks = np.array([[0, 40]])
    rows = np.concatenate(
        [b.rows for b in iter_batches(data, blocks, 8, ["TEFF"], min_good_fraction=0.5)]
    )
    assert 3 not in rows and 5 not in rows and len(rows) == 38


def test_support_flags_points_outside_training_labels() -> None:
    rng = np.random.default_rng(0)
    labels = np.column_stack([rng.normal(4600, 250, 3000), rng.normal(2.4, 0.5, 3000)])
    support = fit_support(labels, ("TEFF", "LOGG"))
    inside = support.contains(labels)
    assert inside.mean() > 0.99
    probes = np.array([[4600, 2.4], [4600, 6.0], [8000, 2.4], [np.nan, 2.4]])
    np.testing.assert_array_equal(support.contains(probes), [True, False, False, False])
    assert support.distance(probes[:1])[0] < 1.5  # a core point has a ratio near one
    with pytest.raises(DataValidationError, match="expected"):
        support.distance(np.ones((2, 3)))


def test_support_save_load(tmp_path) -> None:
    rng = np.random.default_rng(1)
    support = fit_support(rng.normal(size=(200, 3)), ("A", "B", "C"))
    support.save(tmp_path / "support.npz")
    back = LabelSupport.load(tmp_path / "support.npz")
    probe = rng.normal(size=(20, 3)) * 3
    np.testing.assert_array_equal(back.distance(probe), support.distance(probe))
    assert back.label_names == ("A", "B", "C")


def test_train_config_validation() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        TrainConfig(label_names=("TEFF", "TEFF"))
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(label_names=("TEFF",), batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(label_names=(), precision="fp8")
    config = TrainConfig(label_names=["TEFF"], model_options={"k": 4})
    assert TrainConfig.from_dict(config.to_dict()) == config
