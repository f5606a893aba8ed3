"""Register Hearth's site functions with the Globus Compute web service.

`hearth endpoint register-functions` calls `register`; its output goes into hearth.yaml
(`clusters.<name>.compute.function_ids`) and into the endpoint's config (`allowed_functions`),
so that the endpoint runs Hearth's functions and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from endpoints.functions import SITE_FUNCTIONS
from endpoints.protocol import FUNCTIONS_VERSION

# (function, description) -> its id in the Globus Compute web service
RegisterOne = Callable[[Callable[..., Any], str], str]


def register(
    register_one: RegisterOne, functions: Mapping[str, Callable[..., Any]] = SITE_FUNCTIONS
) -> dict[str, str]:
    """Register each function; {name: function id}."""
    return {
        name: str(register_one(fn, f"Hearth site function {name!r}, protocol version {FUNCTIONS_VERSION}"))
        for name, fn in functions.items()
    }


def with_sdk_client(client: Any) -> RegisterOne:
    """Through a `globus_compute_sdk.Client` (which logs the admin in if needed)."""
    return lambda fn, description: str(client.register_function(fn, description=description))


def with_compute_client(compute: Any) -> RegisterOne:
    """Through a `globus_sdk.ComputeClientV3` (any authorizer; POST /v3/functions)."""
    from globus_compute_sdk.sdk.client import FunctionRegistrationData

    def one(fn: Callable[..., Any], description: str) -> str:
        data = FunctionRegistrationData(function=fn, description=description).to_dict()  # type: ignore[no-untyped-call]
        return str(compute.register_function(data)["function_uuid"])

    return one


def endpoint_files(
    function_ids: Mapping[str, str], *, worker_init: str = "", max_workers: int = 8
) -> dict[str, str]:
    """The files of a globus-compute-endpoint directory (~/.globus_compute/<name>/) for a login
    node that runs only these functions: `config.yaml` (the endpoint: allowed_functions) and
    `user_config_template.yaml.j2` (the engine that runs the tasks), as template-capable
    endpoints (globus-compute-endpoint 2.x and later) expect them."""
    allowed = "".join(f"  - {fid}  # {name}\n" for name, fid in function_ids.items())
    init = "".join(f"      {line}\n" for line in worker_init.splitlines()) or "      true\n"
    config = f"""\
# Globus Compute endpoint for Hearth, on a cluster login node. Written by
# `hearth endpoint register-functions`; see docs/admin/endpoint.md.
display_name: hearth
# Only Hearth's site functions (protocol version {FUNCTIONS_VERSION}) may run here.
allowed_functions:
{allowed}"""
    template = f"""\
# The engine that runs Hearth's site functions. Written by
# `hearth endpoint register-functions`; see docs/admin/endpoint.md.
engine:
  type: GlobusComputeEngine
  # Each running stream holds a worker for its whole length.
  max_workers_per_node: {max_workers}
  provider:
    # The functions only relay HTTP between the gateway and the workers' jobs, and submit
    # those jobs, so they run on the login node itself.
    type: LocalProvider
    init_blocks: 1
    min_blocks: 1
    max_blocks: 1
    worker_init: |
{init}"""
    return {"config.yaml": config, "user_config_template.yaml.j2": template}
