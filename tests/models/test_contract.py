"""The family contract (models/contract.py) is checked when a family is defined, and every family
genserve ships keeps it."""

from __future__ import annotations

import pytest

from models.contract import CAPABILITIES, LIKELIHOODS, OBJECTIVES, Family
from models.families import FAMILIES, register


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_shipped_family_declares_within_the_contract(name):
    family = FAMILIES[name]
    assert issubclass(family, Family) and family.family == name
    assert set(family.capabilities) <= CAPABILITIES
    assert family.likelihood in LIKELIHOODS and family.objective in OBJECTIVES
    assert ("likelihood" in family.capabilities) == (family.likelihood != "none")
    promised = {"exact": "nll", "bound": "bound_terms", "none": None}[family.likelihood]
    if promised:  # the method the declaration promises is the family's own, not the base's refusal
        assert getattr(family, promised) is not getattr(Family, promised)
    trains_by = {"loss": "loss", "adversarial": "adversarial_parts"}[family.objective]
    assert getattr(family, trains_by) is not getattr(Family, trains_by)


@pytest.mark.parametrize("declarations, complaint", [
    ({"capabilities": ("sample", "teleport")}, "unknown capabilities"),
    ({"likelihood": "approximate"}, "likelihood must be one of"),
    ({"capabilities": ("likelihood",)}, "disagree"),
    ({"likelihood": "exact"}, "disagree"),
    ({"objective": "evolution"}, "objective must be one of"),
    ({"capabilities": ("project",)}, "needs one of"),
])
def test_a_declaration_outside_the_contract_fails_when_the_class_is_defined(declarations, complaint):
    with pytest.raises(TypeError, match=complaint):
        type("Broken", (Family,), {"family": "broken", **declarations})


def test_only_a_family_can_be_registered():
    with pytest.raises(TypeError):
        register(dict)
