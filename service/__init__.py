"""boxoffice: event ticket booking on atomic Redis/Valkey scripts.

Imports point one way: `http → booking → scripts → lua`. Settings, keys and errors are leaves
that any layer may use.
"""
