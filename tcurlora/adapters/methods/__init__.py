"""Adaptation methods: one module per method (or per family of tiny ones), found by name in `registry`."""
