"""XEP-0045 Multi-User Chat, split by concern:

- service.py: the service domain (Router.add_service), disco, room creation, the module;
- room.py: occupants, roles and affiliations, presence broadcast, messages, nick changes;
- config.py: the room configuration form (XEP-0004 muc#roomconfig) and room features;
- admin.py: muc#admin (kick, voice, bans, member/admin/owner lists), muc#owner
  (configuration, destruction), mediated invitations;
- history.py: discussion history for newcomers (XEP-0203 delay stamps).
- occupant_id.py: XEP-0421 occupant ids, on what the room sends about or from an occupant.
- vcard.py: XEP-0486 room avatars, the room's vcard-temp on its bare JID.

Persistent rooms are stored by fastxmpp/storage/muc.py. With `[s2s] enabled` the service
domain federates (stream/s2s.py): users of other servers are occupants as local users are.
"""

from .service import MucModule

MODULE = MucModule

__all__ = ["MODULE", "MucModule"]
