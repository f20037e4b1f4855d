"""``tta-serve predict`` and ``tta-serve evaluate``: classify files through a server (the
client) or in this process (the core); ``backends`` hides which, ``output`` writes the rows."""
