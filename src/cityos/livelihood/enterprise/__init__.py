"""惠企: policy matching for companies (score, why, what-if) and financing matchmaking (融资对接)."""
