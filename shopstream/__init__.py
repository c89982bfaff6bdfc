"""shopstream: streaming online learning for e-commerce clickstreams."""

__version__ = "0.1.0"
