"""Model families written outside models/, against models/contract.py alone, one file each, and
found only by `GENSERVE_FAMILIES=tests.families.MODULE:Class` (test_outside_families.py)."""
