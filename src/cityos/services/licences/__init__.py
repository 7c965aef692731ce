"""E-licences (电子证照): signed licences, verification, revocation, wallets."""
