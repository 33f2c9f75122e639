"""Reference JSONDOC server and client: newline-delimited JSON documents over a stream.

``protocol`` is sans-IO (framing, strict parsing, dispatch), ``store`` holds the
documents (in memory or in SQLite), ``server`` and ``client`` are the socket drivers.
"""
