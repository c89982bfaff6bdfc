"""The `shopstream` command line: the top layer, the only one that imports every stage.

``cli.commands`` parses the options and hands each command to its stage
(``offline``, ``stream``); ``cli.demo`` is the one-command demo.
"""

from shopstream.options import env_name

from .commands import build_parser, main

__all__ = ["build_parser", "env_name", "main"]
