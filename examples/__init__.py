"""Runnable examples used by the README: jobs and instrument scripts."""
