"""Studies run from a checkout, beside the framework (aer) and outside its wheel: they may import aer,
aer imports none of them. Run each from the repository root, e.g. `python -m studies.frameworks`."""
