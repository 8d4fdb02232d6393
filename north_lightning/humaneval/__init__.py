"""Blind pairwise human evaluation of agent runs: generate trajectories, serve a rating app, report win rates."""
