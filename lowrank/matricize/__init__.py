"""matricize."""
