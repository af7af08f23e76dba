"""I/O adapters for sansio-gateway: server, upstream client, stores, CLI.

Thin loops that execute what the core (``sansio_gateway``) asks for and feed
the results back.  Nothing here decides protocol questions.
"""
