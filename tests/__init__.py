"""GenieHive test suite."""
