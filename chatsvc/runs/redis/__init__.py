"""The Redis backend of the run registry (SPEC §12): runs shared by every worker and host.

- ``registry``: ``RedisRunRegistry``, the store (keys, the interface's operations, gc);
- ``scripts``: its Lua, one script per change that checks and then writes;
- ``leases``: the leases of the runs this process executes;
- ``follower``: live delivery to this process's subscribers, one ``XREAD`` for all runs.
"""

from chatsvc.runs.redis.registry import RedisRunRegistry

__all__ = ["RedisRunRegistry"]
