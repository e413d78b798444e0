"""The designs boxoffice is measured against, each serving the same routes under the same
uvicorn settings: `naive` (Starlette + redis-py running boxoffice's own scripts) and `pglock`
(every booking a PostgreSQL transaction holding the event's row lock)."""
