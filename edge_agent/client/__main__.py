"""``python -m edge_agent.client`` is the ``edge-agent`` command (one front door, every verb)."""

from edge_agent.cli import main

if __name__ == "__main__":
    main()
