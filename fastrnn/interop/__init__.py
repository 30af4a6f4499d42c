"""Adapters to other frameworks; each imports its framework lazily."""
