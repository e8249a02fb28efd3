#!/usr/bin/env bash
# SPEC §13 stream workloads, peers and chatsvc in one sequence (the machine is noisy: compare
# ratios within one sequence). Needs the shared fan-out harness (HARNESS, default
# ../shared/bench), a peers venv in PY (fastapi sse-starlette uvicorn gevent) and Node.js.
# Usage: benchmarks/fanout_sequence.sh [fanout|10k|1000|redis|all]
set -u
harness=${HARNESS:-../shared/bench}
what=${1:-all}
run() { echo "### $*"; "$@" 2>/dev/null | tail -n 1; }
if [ "$what" = fanout ] || [ "$what" = all ]; then
  run bash "$harness/peer_fanout.sh" gevent 10 100 300 0.01
  run bash "$harness/peer_fanout.sh" starlette 10 100 300 0.01
  run bash "$harness/chatsvc_fanout.sh" 10 100 150 0.02
fi
if [ "$what" = 10k ] || [ "$what" = all ]; then
  run bash "$harness/peer_fanout.sh" gevent 1 10000 2 0.01
  run bash "$harness/peer_fanout.sh" starlette 1 10000 2 0.01
  CHATSVC_WORKER_CONNECTIONS=12000 run bash "$harness/chatsvc_fanout.sh" 1 10000 1 0.02
fi
if [ "$what" = 1000 ] || [ "$what" = all ]; then
  run bash "$harness/peer_fanout.sh" gevent 1000 1 300 0.01
  run bash "$harness/peer_fanout.sh" starlette 1000 1 300 0.01
  run bash "$harness/chatsvc_fanout.sh" 1000 1 150 0.02
fi
if [ "$what" = redis ] || [ "$what" = all ]; then
  redis=${CHATSVC_BENCH_REDIS_URL:-redis://127.0.0.1:6379/15}
  run bash "$harness/chatsvc_fanout.sh" 10 100 150 0.02
  CHATSVC_REGISTRY_URL=$redis CHATSVC_REDIS_PREFIX=bench1: CHATSVC_WORKERS=1 \
    run bash "$harness/chatsvc_fanout.sh" 10 100 150 0.02
  CHATSVC_REGISTRY_URL=$redis CHATSVC_REDIS_PREFIX=bench2: CHATSVC_WORKERS=2 \
    run bash "$harness/chatsvc_fanout.sh" 10 100 150 0.02
fi
