"""`python -m cli ...` is the `shopstream` command."""

from .commands import main

if __name__ == "__main__":
    raise SystemExit(main())
