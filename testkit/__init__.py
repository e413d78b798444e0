"""Helpers the tests and the benchmarks share: stores and served processes (`support`), the
in-process app client and problem assertions (`app`), a running ledger writer and its pool
(`ledger`), keyspace snapshots and a populated event (`state`), the multi-worker rig (`rig`), the
reference model (`model`), a TLS terminator (`terminator`), and signed tokens with a key set
served on loopback (`tokens`).

Neither `tests` nor `benchmarks`: both import from here and neither imports the other, so a test
module never imports another test module (a helper's home no longer depends on which test
needed it first) and a benchmark runs without the test suite on the path. It is not shipped:
the wheel carries `service`, `ledger` and `lua` only (pyproject's hatch packages).
tests/test_helper_imports.py keeps these rules.
"""
