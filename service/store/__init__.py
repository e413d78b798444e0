"""Redis: the pipelined transport, redis-py clients, scripts, keys, the outbox, the keyspace
layout and epoch markers. Imports the bottom modules and lua; the ledger imports this layer."""
