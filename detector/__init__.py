"""Serverless re-implementation of Microsoft Sentinel scheduled rules over W3CIISLog."""

# The project's one version: pyproject.toml reads it from here (dynamic version) and `--version` prints it.
__version__ = "0.1.0"
