"""What a refused variable name probably meant, for the message that refuses it.

A client exporting PhysioNet 2012 data sends its parameter names (HR, Temp, NIMAP), a FHIR
integration LOINC codes (8867-4), a person other spellings (Heart_Rate, heart-rate): each
is mapped to the catalogue's name, so the 422 says "the catalogue calls it 'heart_rate'"
instead of leaving the client to search a list.
"""

from __future__ import annotations

import re
from functools import cache

from models.catalogue import CATALOGUE

__all__ = ["unknown_variable"]


def _key(name: str) -> str:
    """Case, spaces, hyphens and underscores ignored: "Heart rate" and "heart_rate" meet."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


@cache
def _meant() -> dict[str, str]:
    """Spelling key -> catalogue name, built on the first refusal.

    The PhysioNet names come from the importer's own table (training.import_physionet), the
    one mapping the training data went through; imported here, on the refusal path, because
    the importer pulls in what the service does not otherwise need at start-up.
    """
    from training.import_physionet import DESCRIPTORS, TIME_SERIES

    table = {_key(v.loinc): v.name for v in CATALOGUE.values() if v.loinc}
    table.update({_key(k): v for k, v in {**DESCRIPTORS, **TIME_SERIES}.items()
                  if v in CATALOGUE})
    table.update({_key(name): name for name in CATALOGUE})
    return table


def unknown_variable(name: str) -> str:
    """The refusal of `name`, which is not in the catalogue, with the name it stands for
    when one is known."""
    message = f"unknown variable {name[:64]!r}"
    meant = _meant().get(_key(name))
    if meant is None:
        return message
    if CATALOGUE[meant].kind == "static":
        return f"{message}: the catalogue calls it {meant!r}, a static descriptor sent in " \
            "'static'"
    return f"{message}: the catalogue calls it {meant!r}"
