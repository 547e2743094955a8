"""The contract of the fused graph, below both the exporter and the runtimes.

``export/`` writes fused graphs and engines, ``runtime/`` runs them, and both agree through this
package only: the fused module itself (``fused.py``: uint8 frame → semantic, score, mask), the graph's
input/output names, dtypes and metadata (``contract.py``: ``ExportSpec``, ``read_spec``), and the
TensorRT engine's sidecar (``engine_cache.py``). It imports neither ``export`` nor ``runtime``.
"""
