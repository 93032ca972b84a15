"""Record what a server answers to tests/sim/vllm_requests.PROBES.

    python vllm_check/record.py URL MODEL OUT.json

Run against real vLLM (vllm_check/run.sh does), the recording becomes
tests/sim/vllm_recorded.json, which the simulator's fidelity test compares against.
Streams are kept as their list of `data:` payloads plus the raw framing of the first
event, so the comparison can look at both.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.sim.vllm_requests import record


def main() -> None:
    base, model, path = sys.argv[1], sys.argv[2], sys.argv[3]
    data = asyncio.run(record(base.rstrip("/"), model))
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    print(f"recorded {len(data['probes'])} probes from vLLM {data['version']} to {path}")


if __name__ == "__main__":
    main()
