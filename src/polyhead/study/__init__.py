"""The dual-head study: harder annotators, in-memory scene sets and probabilistic metrics.

Used by ``benchmarks/dual_head_study.py``; see ``docs/dual-head.md``.
"""
