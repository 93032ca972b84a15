"""A vLLM-compatible simulator: the embedded default backend, and the backend of tests and
benchmarks. It plays vLLM's OpenAI server (shapes, SSE framing, errors, /tokenize,
/metrics) with deterministic text, and misbehaves on request: a `[[sim:KEY=VALUE,...]]`
directive in the prompt or the `x-sim-fault` header (keys status, reset, drop_after,
stall_after, malformed_after, ttft, tps; see `gateway.sim.faults`). It can also play
Llama Guard 3 (`SimSettings.guard_models`, `gateway sim --guard-model NAME`): `safe` or
`unsafe\nS9,...` from a keyword table or a `[[sim:guard=...]]` directive, with vLLM's
logprobs, so tests can run the gateway's guard classifier against it.

    settings.py    SimSettings: models, guard models, time to first token, tokens/second
    tokenizer.py   a stateless, reversible tokenizer and the chat template
    generate.py    what the model says for (prompt, seed, choice), and when it stops
    guard.py       playing a guard model: verdicts and their log-probabilities
    faults.py      [[sim:...]] directives: errors, resets, drops, stalls, bad events,
                   a guard's verdict
    protocol.py    requests as vLLM validates them; vLLM's error body
    job.py         one planned request and its vLLM-shaped bodies and SSE events
    engine.py      serving a job: pacing, faults, noticing a client leave
    embeddings.py  deterministic unit vectors
    metrics.py     vLLM's metric names on an injected registry
    app.py         the routes, SimStats, create_sim_app, run_sim
"""

from gateway.sim.app import SIM_STATS, VLLM_KEEPALIVE_S, SimStats, create_sim_app, run_sim
from gateway.sim.settings import SimSettings

__all__ = ["SIM_STATS", "VLLM_KEEPALIVE_S", "SimSettings", "SimStats", "create_sim_app",
           "run_sim"]
