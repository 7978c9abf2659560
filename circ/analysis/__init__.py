"""Analyses over the IR: the networkx view, statistics, and dependency groups."""
