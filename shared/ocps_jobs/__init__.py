"""OCPS Job Manager: the shared library behind the create_job, query_job and results functions."""

__all__ = ["__version__"]

__version__ = "0.1.0"
