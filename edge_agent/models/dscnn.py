"""Placeholder: ds-cnn is being written (issue 3)."""
