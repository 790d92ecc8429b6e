"""`cf live`: real-time generation in the browser, steered while it plays (session, server, protocol, page)."""
