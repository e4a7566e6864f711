"""Reliability and security suite (issue 7): bad inputs across the CLI and API."""
