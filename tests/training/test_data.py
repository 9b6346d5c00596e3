import pandas as pd
import pytest

from training.data import DataError, load_dataset
from training.synthesize import write_cohort


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    write_cohort(60, 1, out)
    return out


def _csv_dir(tmp_path, obs_rows, patient_rows):
    pd.DataFrame(obs_rows, columns=["patient_id", "time_hours", "variable", "value"]).to_csv(
        tmp_path / "observations.csv", index=False)
    pd.DataFrame(patient_rows, columns=["patient_id", "age", "died", "los_days"]).to_csv(
        tmp_path / "patients.csv", index=False)
    return tmp_path


def test_load_dataset_reads_a_synthetic_cohort(synthetic):
    ds = load_dataset(synthetic)
    assert len(ds.patients) == 60
    assert ds.truth is not None and len(ds.truth) == 60
    assert ds.observations["patient_id"].map(type).eq(str).all()
    assert ds.patients["died"].dtype == "int64"
    assert len(ds.fingerprint) == 64


def test_fingerprint_is_stable_and_changes_with_content(synthetic, tmp_path):
    assert load_dataset(synthetic).fingerprint == load_dataset(synthetic).fingerprint
    other = tmp_path / "other"
    write_cohort(60, 2, other)
    assert load_dataset(other).fingerprint != load_dataset(synthetic).fingerprint


def test_load_dataset_reads_csv_and_keeps_ids_as_strings(tmp_path):
    d = _csv_dir(tmp_path, [("007", 1.0, "heart_rate", 80.0)], [("007", 70, 0, 3.0)])
    ds = load_dataset(d)
    assert ds.observations["patient_id"].iloc[0] == "007"  # leading zeros survive
    assert ds.patients["patient_id"].iloc[0] == "007"
    assert ds.truth is None


def test_missing_directory_or_table_is_named(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="observations"):
        load_dataset(tmp_path)


def test_missing_column_is_named(tmp_path):
    pd.DataFrame({"patient_id": ["a"], "time_hours": [1.0], "value": [1.0]}).to_csv(
        tmp_path / "observations.csv", index=False)
    pd.DataFrame({"patient_id": ["a"], "died": [0], "los_days": [3.0]}).to_csv(
        tmp_path / "patients.csv", index=False)
    with pytest.raises(DataError, match="observations.csv: missing column.*variable"):
        load_dataset(tmp_path)


def test_unknown_variable_negative_time_and_orphan_rows_are_refused(tmp_path):
    with pytest.raises(DataError, match="unknown variable.*heartrate"):
        load_dataset(_csv_dir(tmp_path, [("a", 1.0, "heartrate", 80.0)], [("a", 70, 0, 3.0)]))
    with pytest.raises(DataError, match="time_hours"):
        load_dataset(_csv_dir(tmp_path, [("a", -1.0, "heart_rate", 80.0)], [("a", 70, 0, 3.0)]))
    with pytest.raises(DataError, match="not in patients.csv"):
        load_dataset(_csv_dir(tmp_path, [("b", 1.0, "heart_rate", 80.0)], [("a", 70, 0, 3.0)]))
    with pytest.raises(DataError, match="died must be 0 or 1"):
        load_dataset(_csv_dir(tmp_path, [("a", 1.0, "heart_rate", 80.0)], [("a", 70, 2, 3.0)]))
