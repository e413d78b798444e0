"""The Lua scripts that make every state change of an event one atomic step.

One script per operation, each with a header naming its KEYS, ARGV and replies. This package
holds no code beyond this anchor: `service.store.scripts` reads the `.lua` files through
`importlib.resources`, so they travel inside the wheel.
"""
