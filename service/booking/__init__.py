"""The booking engine (one script call per operation) and write admission. Imports store and
the bottom modules."""
