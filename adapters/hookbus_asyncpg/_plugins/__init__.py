"""Plugins and their migrations: the installer, the migrator, its locks, and what they record."""
