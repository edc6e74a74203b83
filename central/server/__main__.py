"""``python -m central.server`` is the ``central`` command (one front door, every verb)."""

from central.cli import main

if __name__ == "__main__":
    main()
