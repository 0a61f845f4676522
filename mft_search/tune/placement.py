"""Where a trial's processes go, in Ray's resources: shared by the Tune stage and the cluster
checks, in a module of its own so that the checks' tasks (tune.cluster) import no torch."""

DRIVER_CPU = 0.01
# Ray's resource of the head node alone (ray._common.constants.HEAD_NODE_RESOURCE_NAME), one unit.
HEAD_RESOURCE = "node:__internal_head__"
HEAD_SLIVER = 0.001  # of it per multi-worker trial driver: up to 1000 at once
