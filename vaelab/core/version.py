"""The version of vaelab (read by setuptools without importing the package)."""

__version__ = "0.3.0"
