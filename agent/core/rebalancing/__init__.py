"""Moves that even out load and empty hosts: the planner (`planner`), when a host runs
its next round (`schedule`), and what a draining host moves next (`drain`)."""
