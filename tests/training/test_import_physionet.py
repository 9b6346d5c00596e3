"""The PhysioNet 2012 importer on hand-made records, and on the real set A when present."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.catalogue import CATALOGUE
from training.import_physionet import (
    DESCRIPTORS,
    DROPPED,
    TIME_SERIES,
    import_physionet,
    main,
)

REPO = Path(__file__).resolve().parents[2]
SET_A = REPO.parent / "shared" / "data" / "physionet2012"

HEADER = "Time,Parameter,Value\n"
# 1001: every kind of row. 1002: descriptors only (no time series). 1003: weight only
# recorded after admission, Gender missing, a cuff pressure beside an arterial one.
RECORDS = {
    "1001": HEADER + "\n".join([
        "00:00,RecordID,1001",
        "00:00,Age,71",
        "00:00,Gender,0",
        "00:00,Height,170.2",
        "00:00,ICUType,3",
        "00:00,Weight,80.5",
        "00:07,HR,88",
        "00:07,Temp,-1",            # missing
        "00:07,Foo,3",              # unknown parameter
        "00:37,,12",                # empty parameter
        "00:37,HR,400",             # out of possible range
        "01:30,MechVent,1",
        "01:30,FiO2,50",            # percent -> 0.5
        "02:00,Mg,2.0",             # mg/dL -> mmol/L
        "02:00,Temp,98.6",          # Fahrenheit -> 37 C
        "03:15,Weight,81",          # later weight: static only
        "47:59,SysABP,120",
    ]) + "\n",
    "1002": HEADER + "\n".join([
        "00:00,RecordID,1002",
        "00:00,Age,50",
        "00:00,Gender,1",
        "00:00,Height,-1",
        "00:00,ICUType,4",
        "00:00,Weight,-1",
    ]) + "\n",
    "1003": HEADER + "\r\n".join([   # Windows line endings and no final newline
        "00:00,RecordID,1003",
        "00:00,Age,64",
        "00:00,Gender,-1",
        "00:00,Height,500",         # out of range
        "00:00,ICUType,1",
        "00:00,Weight,-1",
        "00:10,NISysABP,110",       # same minute as SysABP: dropped
        "00:10,SysABP,115",
        "00:20,NISysABP,118",       # alone: kept as sbp
        "02:00,Weight,70",
        "05:00,Weight,72",
    ]),
}
OUTCOMES = ("RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"
            "1001,15,6,9,7,1\n1002,-1,-1,4,-1,0\n1003,10,-1,-1,-1,0\n1004,1,1,1,-1,0\n")


def write_dir(tmp_path: Path, records: dict[str, str] = RECORDS) -> tuple[Path, Path]:
    src = tmp_path / "set-x"
    src.mkdir()
    for rid, text in records.items():
        (src / f"{rid}.txt").write_bytes(text.encode())
    outcomes = tmp_path / "Outcomes-x.txt"
    outcomes.write_text(OUTCOMES)
    return src, outcomes


def write_tar(tmp_path: Path) -> tuple[Path, Path]:
    src, outcomes = write_dir(tmp_path)
    archive = tmp_path / "set-x.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="set-x")
    return archive, outcomes


def obs_of(observations: pd.DataFrame, pid: str, variable: str) -> pd.DataFrame:
    return observations[(observations.patient_id == pid) & (observations.variable == variable)]


def test_every_row_gets_one_counted_fate(tmp_path):
    result = import_physionet(*write_dir(tmp_path))
    s = result.summary
    assert s.records == 3
    assert s.deaths == 1
    assert s.without_series == 1  # 1002
    assert s.without_valid == 0
    assert s.patients == 2
    assert s.rows_read == 17 + 6 + 11
    assert sum(s.fates.values()) == s.rows_read
    assert s.fates["missing (-1)"] == 5  # Temp; Height, Weight of 1002; Gender, Weight of 1003
    assert s.fates["unknown parameter"] == 1
    assert s.unknown == {"Foo": 1}
    assert s.fates["empty parameter"] == 1
    assert s.fates["out of possible range"] == 2  # HR 400, Height 500
    assert s.fates["record id"] == 3
    assert s.fates["non-invasive duplicate of invasive"] == 1
    assert s.fates["later weight (static weight only)"] == 3
    assert s.fates["kept"] == 8  # 6 of 1001, 2 of 1003
    assert len(result.observations) == 8
    assert s.conversions == {"FiO2 percent -> fraction": 1, "Temp Fahrenheit -> Celsius": 1,
                             "Mg mg/dL -> mmol/L": 1}
    assert s.weight_from_later_row == 1
    assert s.outcome_rows_unused == 1  # 1004
    text = s.format()
    assert "stays without time series:    1" in text


def test_values_are_mapped_to_catalogue_names_and_units(tmp_path):
    obs = import_physionet(*write_dir(tmp_path)).observations
    assert list(obs.columns) == ["patient_id", "time_hours", "variable", "value"]
    assert set(obs.variable) <= set(CATALOGUE)
    assert set(obs.patient_id) == {"1001", "1003"}
    hr = obs_of(obs, "1001", "heart_rate")
    assert hr.time_hours.tolist() == pytest.approx([7 / 60]) and hr.value.tolist() == [88.0]
    assert obs_of(obs, "1001", "fio2").value.tolist() == [0.5]
    assert obs_of(obs, "1001", "temperature").value.tolist() == pytest.approx([37.0])
    assert obs_of(obs, "1001", "magnesium").value.tolist() == pytest.approx([2.0 * 0.41144],
                                                                            rel=1e-4)
    vent = obs_of(obs, "1001", "mech_vent")
    assert vent.time_hours.tolist() == [1.5] and vent.value.tolist() == [1.0]
    assert obs_of(obs, "1001", "sbp").time_hours.tolist() == pytest.approx([47 + 59 / 60])
    # The arterial reading wins at 00:10; the lone cuff reading at 00:20 stays.
    sbp = obs_of(obs, "1003", "sbp")
    assert sbp.value.tolist() == [115.0, 118.0]
    assert "weight" not in set(obs.variable)
    assert obs.equals(obs.sort_values(["patient_id", "time_hours", "variable"]))


def test_patients_table_holds_descriptors_and_outcomes(tmp_path):
    patients = import_physionet(*write_dir(tmp_path)).patients.set_index("patient_id")
    assert list(patients.index) == ["1001", "1003"]  # 1002 has no series, 1004 no record
    p1, p3 = patients.loc["1001"], patients.loc["1003"]
    assert (p1.age, p1.sex, p1.height, p1.weight, p1.icu_type) == (71, "female", 170.2, 80.5,
                                                                    "MICU")
    assert (p1.died, p1.los_days, p1.saps_i, p1.sofa) == (1, 9, 15, 6)
    assert pd.isna(p3.sex) and pd.isna(p3.height)  # missing and out of range
    assert p3.weight == 70.0  # first weight recorded after admission
    assert p3.icu_type == "CCU"
    assert pd.isna(p3.sofa) and pd.isna(p3.los_days) and p3.saps_i == 10
    assert patients["died"].dtype == np.int64


def test_tar_and_directory_give_identical_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert main(["--src", str(write_dir(a)[0]), "--outcomes", str(a / "Outcomes-x.txt"),
                 "--out", str(a / "out")]) == 0
    archive, outcomes = write_tar(b)
    assert main(["--src", str(archive), "--outcomes", str(outcomes),
                 "--out", str(b / "out")]) == 0
    for name in ("observations.parquet", "patients.parquet"):
        assert (a / "out" / name).read_bytes() == (b / "out" / name).read_bytes()


def test_bad_input_is_refused_with_a_named_problem(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    src, outcomes = write_dir(tmp_path / "a", {"7": "Time,Param,Value\n00:00,HR,80\n"})
    with pytest.raises(ValueError, match="first line"):
        import_physionet(src, outcomes)
    src, outcomes = write_dir(tmp_path / "b", {"5": HEADER + "00:00,HR,80\n"})
    with pytest.raises(ValueError, match="no row for 1"):
        import_physionet(src, outcomes)
    assert main(["--src", str(tmp_path / "nope"), "--outcomes", str(outcomes),
                 "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_record_id_line_must_match_file_name(tmp_path):
    src, outcomes = write_dir(tmp_path, {"1001": HEADER + "00:00,RecordID,9\n00:05,HR,80\n"})
    with pytest.raises(ValueError, match="RecordID line"):
        import_physionet(src, outcomes)


def test_mapping_table_accounts_for_every_challenge_parameter():
    challenge = {"RecordID", "Age", "Gender", "Height", "ICUType", "Weight", "Albumin", "ALP",
                 "ALT", "AST", "Bilirubin", "BUN", "Cholesterol", "Creatinine", "DiasABP",
                 "FiO2", "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "Mg", "MAP",
                 "MechVent", "Na", "NIDiasABP", "NIMAP", "NISysABP", "PaCO2", "PaO2", "pH",
                 "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT",
                 "Urine", "WBC"}
    assert challenge == set(TIME_SERIES) | set(DESCRIPTORS) | (set(DROPPED) - {"Survival"})
    assert set(TIME_SERIES.values()) <= set(CATALOGUE)
    doc = (REPO / "docs" / "physionet.md").read_text()
    for name in challenge | set(DROPPED):
        assert f"`{name}`" in doc, name


@pytest.mark.slow  # about 5-12 s on the shared 2-core machine
@pytest.mark.skipif(not SET_A.is_dir(), reason="PhysioNet 2012 set A not present")
def test_real_set_a(tmp_path):
    result = import_physionet(SET_A / "set-a.tar.gz", SET_A / "Outcomes-a.txt")
    s = result.summary
    assert s.records == 4000
    assert s.deaths == 554
    assert s.without_series == 3
    assert s.patients == 4000 - 3 - s.without_valid
    assert s.fates["unknown parameter"] == 0 and s.fates["empty parameter"] == 0
    assert sum(s.fates.values()) == s.rows_read
    assert set(s.per_parameter.index) == set(TIME_SERIES) | set(DESCRIPTORS) | {"RecordID"}
    assert {"140501", "140936", "141264"}.isdisjoint(result.patients.patient_id)
    obs = result.observations
    for variable, group in obs.groupby("variable"):
        lo, hi = CATALOGUE[variable].possible
        assert group.value.between(lo, hi).all(), variable
    assert obs.time_hours.between(0, 48).all()
    assert result.patients.died.sum() <= 554


def test_blank_lines_and_unparseable_fields_are_counted(tmp_path):
    text = HEADER + "00:00,RecordID,1001\n00:05,HR,80\n\n0x:10,HR,81\n00:75,HR,82\n" \
        "00:20,HR,abc\n00:30,HR,\n 01:00 , HR ,83\n"
    result = import_physionet(*write_dir(tmp_path, {"1001": text}))
    fates = result.summary.fates
    assert fates["blank line"] == 1
    assert fates["unparseable time"] == 2
    assert fates["unparseable value"] == 2
    assert fates["kept"] == 2
    assert result.observations.value.tolist() == [80.0, 83.0]
    assert result.observations.time_hours.tolist() == pytest.approx([5 / 60, 1.0])
