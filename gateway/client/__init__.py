"""The user's side of a gateway: sign in with Globus Auth, keep the tokens, call the gateway.

- :mod:`gateway.client.tokens` — the login file (~/.config/hearth/login.json): modes, atomic writes;
- :mod:`gateway.client.login` — the native-app flow, silent refresh and logout, through ``globus_sdk``;
- :mod:`gateway.client.api` — the gateway's Hearth endpoints (/v1/auth/config, /v1/whoami, /v1/keys).

The `hearth login / whoami / token / logout / keys` commands (gateway/cli_login.py) only parse and
print around these. Nothing here imports the server side of the gateway.
"""

from gateway.client.api import GatewayClient, GatewayError, GlobusLoginConfig
from gateway.client.login import LoginError, NotLoggedIn, Session, SessionExpired
from gateway.client.tokens import Login, LoginFile, TokenFileError

__all__ = [
    "GatewayClient",
    "GatewayError",
    "GlobusLoginConfig",
    "Login",
    "LoginError",
    "LoginFile",
    "NotLoggedIn",
    "Session",
    "SessionExpired",
    "TokenFileError",
]
