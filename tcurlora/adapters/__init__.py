"""Adaptation of a base network: the config (`config`), the adapted model (`model`: apply -> train ->
merge/unmerge), the methods by name (`methods.registry`), adapter folders (`io`).

Kept free of imports, so torch-free code (the job schema, Slicer's panels) can read the method registry.
"""
