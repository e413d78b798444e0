"""boxoffice's service: event ticket booking on atomic Redis/Valkey scripts.

Its layers are its sub-packages, imports pointing down only (`tests/test_layers.py`):
`run` (processes, the composition root) → `api` (HTTP) → `booking` (the engine) → `store`
(Redis) → `lua`. The modules directly here (settings, errors, ids, bounds, address, logs) are
what every layer reads.
"""
