"""fastxmpp: an XMPP server with a compiled stream parser and router."""

__version__ = "0.1.0"
