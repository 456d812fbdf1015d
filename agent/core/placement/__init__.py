"""Where a VM may go (`targets`) and whether a migration may start there (`admission`),
shared by manual moves, drains, the rebalancer and the simulator."""
