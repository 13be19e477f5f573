"""Callback deliveries: the receiver and waiting for runs by callback."""
