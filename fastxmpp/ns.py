"""XML namespaces used across the server, named once so `grep` finds every user of a XEP."""

STREAMS = "http://etherx.jabber.org/streams"
CLIENT = "jabber:client"
SERVER = "jabber:server"
XML = "http://www.w3.org/XML/1998/namespace"
STREAM_ERRORS = "urn:ietf:params:xml:ns:xmpp-streams"
STANZA_ERRORS = "urn:ietf:params:xml:ns:xmpp-stanzas"
TLS = "urn:ietf:params:xml:ns:xmpp-tls"
SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SESSION = "urn:ietf:params:xml:ns:xmpp-session"
# Payloads more than one concern looks at (streams and modules alike).
CHATSTATES = "http://jabber.org/protocol/chatstates"  # XEP-0085
MUC_USER = "http://jabber.org/protocol/muc#user"  # XEP-0045
CARBONS = "urn:xmpp:carbons:2"  # XEP-0280
MAM = "urn:xmpp:mam:2"  # XEP-0313
FORWARD = "urn:xmpp:forward:0"  # XEP-0297
HINTS = "urn:xmpp:hints"  # XEP-0334
