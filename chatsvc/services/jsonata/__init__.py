"""JSONata, user-controlled code, evaluated where it cannot stall or crash the server.

- ``expressions``: the one place expressions are compiled (cached) and evaluated, with
  their cooperative time and depth bounds;
- ``pool``: the evaluator processes every evaluation goes to, killed at their time
  limit or once stuck at their memory cap, shared out fairly between teams;
- ``worker``: the evaluator process itself (it imports only ``expressions``).
"""
