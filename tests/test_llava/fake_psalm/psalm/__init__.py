"""Fake PSALM package for the drop-in tests."""
