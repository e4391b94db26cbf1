"""Workloads to prune (installed as ``qprune.problems``)."""
