"""Load generator for XMPP servers (issue 6): see benchmarks/load/__main__.py."""
