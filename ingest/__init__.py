"""Receiving side: the HTTP receiver and the append-only log it writes."""
