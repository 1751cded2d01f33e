"""Contracts: the transaction event, dimension tables, and the tables Pulse writes."""
