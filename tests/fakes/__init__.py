"""Test doubles that stand in for real model servers."""
