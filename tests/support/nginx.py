"""`nginx -t` on a site file of the deploy/ configs, without installing anything."""

from __future__ import annotations

import subprocess
from pathlib import Path


def nginx_test(nginx: str, site: str, certs_dir: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `site` (a file of the `http` block), its certificates under `certs_dir`
    replaced by a throwaway pair and its logs and temporary files moved under tmp_path."""
    certs = tmp_path / "certs"
    certs.mkdir()
    key, cert = str(certs / "privkey.pem"), str(certs / "fullchain.pem")
    openssl = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    subprocess.run(
        [*openssl, "-nodes", "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
        capture_output=True,
        check=True,
    )
    site = site.replace(certs_dir, f"{certs}/").replace("/var/log/nginx/", f"{tmp_path}/")
    (tmp_path / "hearth.conf").write_text(site)
    temp = " ".join(
        f"{k}_temp_path {tmp_path}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ access_log {tmp_path}/access.log; {temp} include {tmp_path}/hearth.conf; }}\n"
    )
    argv = [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")]
    return subprocess.run(argv, capture_output=True, text=True, check=False)
