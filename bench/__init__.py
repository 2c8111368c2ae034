"""Benchmarks of omnixan-lb: ``python -m bench`` runs them all and rewrites docs/benchmarks.md.

They print figures and assert nothing; pytest does not collect them.
"""
