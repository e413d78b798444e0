"""The durable ledger: PostgreSQL fed from the outbox streams. It never imports HTTP."""
