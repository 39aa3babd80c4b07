"""The version of edgeres, which every record carries."""

__version__ = "0.1.0"
