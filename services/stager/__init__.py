"""stager service (built in a later milestone; importable so the layout is complete)."""
