"""Choosing the dial: the sweep over exit settings, and the operating point."""
