"""The test suite's fixtures (real servers on loopback, dev-key tokens) for vllm_check/."""

from tests.conftest import home, mint, servers, start_gateway, token  # noqa: F401
