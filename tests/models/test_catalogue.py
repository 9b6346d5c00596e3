import pytest

from models.catalogue import (
    CATALOGUE,
    CORE_MEASUREMENTS,
    INTERVENTIONS,
    MEASUREMENTS,
    STATICS,
    check_value,
    get,
)

DESIGN_MINIMUM = [
    "heart_rate", "resp_rate", "spo2", "temperature", "sbp", "dbp", "map", "gcs", "fio2",
    "urine_output", "lactate", "creatinine", "bun", "wbc", "platelets", "hct", "potassium",
    "sodium", "glucose", "bicarbonate", "bilirubin", "ph",
]


def test_catalogue_covers_the_design_minimum_statics_and_interventions():
    assert set(DESIGN_MINIMUM) <= set(CORE_MEASUREMENTS) <= set(MEASUREMENTS)
    assert {"age", "sex", "weight", "height"} <= set(STATICS)
    assert {"antibiotics", "vasopressor", "fluid_bolus", "mech_vent"} <= set(INTERVENTIONS)


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_every_entry_has_a_unit_and_a_typical_range_inside_the_possible_range(name):
    v = CATALOGUE[name]
    assert v.unit
    assert v.possible[0] <= v.typical[0] <= v.typical[1] <= v.possible[1]
    if v.kind == "measurement":
        assert v.loinc, f"{name} has no LOINC code"


def test_impossible_value_is_refused_with_variable_value_and_unit():
    ok, message = check_value("temperature", 98.6)
    assert not ok
    assert "temperature" in message and "98.6" in message and "°C" in message


def test_atypical_value_is_accepted_with_a_warning():
    ok, message = check_value("heart_rate", 195)
    assert ok
    assert message == "heart_rate 195 /min is outside the typical range 40-180"


def test_typical_value_passes_silently_and_unknown_names_are_refused():
    assert check_value("heart_rate", 80) == (True, None)
    with pytest.raises(KeyError, match="unknown variable 'pulse'"):
        get("pulse")


def test_codes_and_counts_are_named_without_ucum_annotations():
    ok, message = check_value("sex", 3)
    assert not ok and message == "sex 3 is impossible: expected 0-1"
    ok, message = check_value("antibiotics", -1)
    assert not ok and message is not None and "expected doses in 0-1" in message
    assert "{" not in message


def test_an_odd_value_that_is_typical_in_another_unit_says_so():
    ok, message = check_value("glucose", 15)  # mmol/L sent as mg/dL: scored, with the hint
    assert ok and message == ("glucose 15 mg/dL is outside the typical range 60-350 "
                              "(in mmol/L it would be 270.2 mg/dL)")
    ok, message = check_value("temperature", 98.6)  # Fahrenheit: refused, with the hint
    assert not ok and message is not None and message.endswith("(in °F it would be 37 °C)")
    ok, message = check_value("creatinine", 150)
    assert not ok and message is not None and "in µmol/L it would be 1.7 mg/dL" in message
    # no unit makes 195 /min typical, and an impossible value with no such unit keeps the
    # plain question
    assert check_value("heart_rate", 195)[1] == (
        "heart_rate 195 /min is outside the typical range 40-180")
    assert check_value("heart_rate", 400)[1] is not None
    assert "(is it in another unit?)" in str(check_value("heart_rate", 400)[1])
