"""MNCLGLF reproducibility artifact: methods, data path, training and reporting."""

__version__ = "0.1.0"
