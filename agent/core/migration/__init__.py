"""Live migration, sans-IO:

- `saga`: `MigrationCore`, one host's sagas as source (its phase table) and its
  admissions as target;
- `inbound`: the target's phase table for an arriving VM;
- `reservations`: room held on the target until the VM arrives or its source
  goes quiet;
- `location`: where a VM runs after a fault, from the hypervisors' evidence;
- `policy`: how one migration is driven and how many may run at once;
- `cost`: what a migration costs, for the rebalancer and the simulator.
"""
