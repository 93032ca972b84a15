"""A vLLM-compatible simulator: the embedded default, and the backend in tests and benches."""

from gateway.sim.app import SIM_STATS, SimStats, create_sim_app, run_sim
from gateway.sim.settings import SimSettings

__all__ = ["SIM_STATS", "SimSettings", "SimStats", "create_sim_app", "run_sim"]
