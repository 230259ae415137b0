"""Data access: SQL lives here; repositories flush but never commit."""
