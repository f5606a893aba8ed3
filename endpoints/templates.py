"""Render the sbatch templates (`slurm/*.sbatch.j2`) into job scripts.

Rendering is strict, like Parsl's submit templates: a variable the template uses but the
caller did not give is an error naming it, never an empty string in a shell script. Nothing is
HTML-escaped. Values go into the script through filters that keep them inert:

- `shquote`: one shell word (`shlex.quote`), for every value substituted into shell code;
- `sbatch`: one `#SBATCH` argument, quoted the way sbatch's own parser reads it (a newline, which
  would end the directive and start a script line, or a backslash, is refused);
- `integer`: an int, or an error (Jinja's own `int` filter turns "4; rm -rf ~" into 0);
- `slug`: a job name safe in Slurm's `%x` file-name pattern (no "/", no spaces).

A template refuses values it cannot use with `{{ fail("why") }}`.

Templates are looked up in the admin's `search_path` first, then in the repository's `slurm/`
directory (a source checkout), then in the copy installed with Hearth
(`<prefix>/share/hearth/slurm`).
"""

from __future__ import annotations

import re
import shlex
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import jinja2

__all__ = ["TEMPLATE_SUFFIX", "TemplateRenderError", "render", "template_dirs"]

TEMPLATE_SUFFIX = ".sbatch.j2"

_REPO_TEMPLATES = Path(__file__).resolve().parents[1] / "slurm"
_INSTALLED = Path("share") / "hearth" / "slurm"


class TemplateRenderError(ValueError):
    """A template is missing, malformed, or was given a missing or unsafe value."""


def template_dirs(search_path: Sequence[Path] = ()) -> list[Path]:
    """Where templates are looked up, in order: `search_path`, the checkout, the installation."""
    dirs = [Path(p) for p in search_path]
    if (_REPO_TEMPLATES / f"worker{TEMPLATE_SUFFIX}").is_file():
        dirs.append(_REPO_TEMPLATES)
    for scheme in (sysconfig.get_default_scheme(), sysconfig.get_preferred_scheme("user")):
        installed = Path(sysconfig.get_path("data", scheme)) / _INSTALLED
        if installed.is_dir() and installed not in dirs:
            dirs.append(installed)
    return dirs


def _shquote(value: object) -> str:
    return shlex.quote(str(value))


def _sbatch(value: object) -> str:
    text = str(value)
    if any(c in text for c in "\n\r\\"):
        raise TemplateRenderError(f"an #SBATCH value may not hold a newline or backslash: {text!r}")
    return shlex.quote(text)


def _integer(value: object) -> int:
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError, naming the variable
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TemplateRenderError(f"expected an integer, got {value!r}")
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
        raise TemplateRenderError(f"expected an integer, got {value!r}")
    return int(value)


def _slug(value: object) -> str:
    slug = re.sub(r"[^A-Za-z0-9._]+", "-", str(value)).strip("-.")
    if not slug:
        raise TemplateRenderError(f"nothing usable in a job name: {value!r}")
    return slug


def _fail(message: str) -> None:
    raise TemplateRenderError(message)


def _environment(search_path: Sequence[Path]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_dirs(search_path)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - shell scripts, not HTML; values go through shquote
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(shquote=_shquote, sbatch=_sbatch, integer=_integer, slug=_slug)
    env.globals["fail"] = _fail
    return env


def render(template: str, /, *, search_path: Sequence[Path] = (), **context: object) -> str:
    """Render `template` ("worker", or a file name such as "worker.sbatch.j2") with `context`.

    Raises TemplateRenderError naming the missing variable, the unsafe value, or the template
    that was not found (and where it was looked for).
    """
    name = template if template.endswith(".j2") else template + TEMPLATE_SUFFIX
    env = _environment(search_path)
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateNotFound as exc:
        where = ", ".join(str(d) for d in template_dirs(search_path)) or "nowhere"
        raise TemplateRenderError(f"template {name!r} not found (looked in: {where})") from exc
    except jinja2.UndefinedError as exc:
        raise TemplateRenderError(f"{name}: missing variable: {exc.message}") from exc
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateRenderError(f"{name}, line {exc.lineno}: {exc.message}") from exc
