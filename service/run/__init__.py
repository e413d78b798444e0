"""The processes: the CLI, the API worker's composition root, embedded servers. The one layer
that wires service and ledger together."""
