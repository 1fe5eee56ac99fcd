"""``python -m lightning_clr.cli``: the ``lightning-clr`` command."""

from lightning_clr.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
