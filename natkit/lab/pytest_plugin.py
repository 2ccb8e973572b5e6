"""pytest fixtures for NAT labs (registered through the ``pytest11`` entry point)."""
