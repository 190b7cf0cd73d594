"""Serverless re-implementation of Microsoft Sentinel scheduled rules over W3CIISLog."""

__version__ = "0.1.0"
