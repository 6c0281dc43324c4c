"""The ``interest-stream`` command line."""
