"""The real-road model's recipe: feature cache, cached fine-tuning, mixed evaluation sets.

Sits above ``data``, ``train`` and ``evaluate`` (it uses all three); nothing below imports it.
"""
