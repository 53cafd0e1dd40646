"""Tabular benchmarks: look up the trained accuracy of an architecture instead of training it."""
