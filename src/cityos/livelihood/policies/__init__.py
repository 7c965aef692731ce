"""Policies as data (政策规则) and their vectorised evaluation over a population."""
