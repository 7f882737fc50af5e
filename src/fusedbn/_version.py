"""fusedbn's version, declared once: the package and setup.py both read it from here."""

__version__ = "0.1.0"
