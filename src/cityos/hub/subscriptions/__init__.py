"""NGSI-LD subscriptions with guaranteed delivery: matching in the write transaction, an outbox, a sender."""
