"""RPC: typed JSON messages (``codec``), HTTP (``http``: Quart-Trio and Hypercorn on the
server; on the client a lean HTTP/1.1 client of our own, ``http1``, and httpx for
``https://``), framed TCP for peers (``tcp``), socket reads and writes that wait only when
the socket is not ready (``sockio``, under both) and how a node reaches its peers
(``transport``).

The bottom layer: nothing here imports from :mod:`trioraft.raft` or :mod:`trioraft.kv`.
"""
