"""The `shopstream` command line: the top layer, the only one that imports every stage.

``shopstream.cli.commands`` parses the options and hands each command to its stage
(``shopstream.offline``, ``shopstream.stream``); ``shopstream.cli.demo`` is the one-command demo.
"""

from .commands import build_parser, env_name, main

__all__ = ["build_parser", "env_name", "main"]
