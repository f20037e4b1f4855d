"""Servers a user would otherwise write by hand, over the same model and preprocessing."""
