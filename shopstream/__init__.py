"""shopstream: streaming online learning for e-commerce clickstreams."""

from pathlib import Path as _Path

from .compiled import check as _check

__version__ = "0.1.0"

_check(_Path(__file__).parent)   # an optional compiled module must match its source (compiled.py)
