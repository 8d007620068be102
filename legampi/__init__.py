"""legampi: move encrypted genomic datasets from a transfer end-point into a Crypt4GH archive."""

__version__ = "0.1.0"
