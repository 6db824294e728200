"""Applications built on every layer of the toolkit (``make run``'s job).

They live apart from the core modules (``online_tsm/*.py``, ``online_tsm/models``),
which never import the export, runtime, benchmark or demo layers.
"""
