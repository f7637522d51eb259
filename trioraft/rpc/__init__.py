"""RPC: typed JSON messages (``codec``), HTTP with Quart-Trio, Hypercorn and httpx
(``http``), framed TCP for peers (``tcp``) and how a node reaches its peers (``transport``).

The bottom layer: nothing here imports from :mod:`trioraft.raft` or :mod:`trioraft.kv`.
"""
