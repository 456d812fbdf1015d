"""Rebalancing at scale: workload model, simulator, baselines (issue 6).

`python -m novacron.simulations.rebalance --help`; the model is documented in
`workload.py` (load), `sim.py` (hosts, migrations, strategies) and
`solver.py` (the CP-SAT baseline).
"""
