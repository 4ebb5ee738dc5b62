"""EDM: self-hosted email direct marketing."""

__version__ = "0.1.0"
