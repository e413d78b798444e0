"""HTTP: the route table, the hot routes over raw ASGI, the other handlers, bodies, problem
documents, OpenAPI, rate limits, request ids and metrics. Imports booking, store and the bottom
modules; never run or ledger."""
