"""Reference and site drivers."""
