"""Thin Panel views over explorer.state.Workspace."""
