"""bitscape's ways in for a person: the command line and the Panel dashboard (no numerics here)."""
