"""Fare adjustments (issue 12): placeholder until the adjustment flow lands."""
