"""E-licences (电子证照): signed licences, verification, revocation, wallets.

``verify_offline(document, jwks)`` (from `cityos.services.licences.verify`, which needs only the
standard library and `cryptography`) checks a licence without the server.
"""

from cityos.services.licences.verify import Verification, verify_offline

__all__ = ["Verification", "verify_offline"]
