"""The README and docs/ are the user's manual: every command and route they show exists, every
command and route that exists is in docs/cli.md and docs/api.md, and every link lands."""

from __future__ import annotations

import re
from pathlib import Path

import click

from shared.cli import main as leukonet_cli
from tests.hub.conftest import close_app, hub_config, migrated_app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def text(path: Path) -> str:
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    s = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return s.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", text(path), re.M)}


def test_the_readme_is_a_front_door():
    readme = text(ROOT / "README.md")
    assert len(readme.splitlines()) < 200
    assert "make demo" in readme and "make test" in readme
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"README does not link {page.name}"


def test_every_link_lands():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", text(page)):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            assert dest.exists(), f"{page.name}: link to missing {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest), f"{page.name}: no heading #{anchor} in {dest.name}"


def leaf_commands() -> set[str]:
    ctx = click.Context(leukonet_cli)

    def walk(cmd: click.Command, path: list[str]) -> set[str]:
        if isinstance(cmd, click.Group):
            out: set[str] = set()
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                out |= walk(sub, [*path, name])
            return out
        return {" ".join(path)}

    return walk(leukonet_cli, [])


def resolve(words: list[str]) -> str:
    """The command path ``words`` names (options and arguments dropped); fails on an unknown word."""
    cmd: click.Command = leukonet_cli
    ctx = click.Context(leukonet_cli)
    path: list[str] = []
    for w in words:
        if not isinstance(cmd, click.Group):
            break
        sub = cmd.get_command(ctx, w)
        assert sub is not None, f"`leukonet {' '.join(words)}`: no command {w!r}"
        cmd, path = sub, [*path, w]
    return " ".join(path)


def shown_commands() -> dict[str, str]:
    """Every `leukonet ...` invocation the pages show in code (inline or fenced) -> its page; the
    words up to the first option or argument."""
    found: dict[str, str] = {}
    for page in PAGES:
        body = text(page)
        snippets = re.findall(r"`leukonet ([^`]+)`", body)
        for block in re.findall(r"^```[a-z]*\n(.*?)^```", body, re.M | re.S):
            snippets += re.findall(r"^(?:\$ )?leukonet (.+)$", block, re.M)
        for snippet in snippets:
            words = []
            for w in snippet.split():
                if not re.fullmatch(r"[a-z][a-z0-9-]*", w):
                    break
                words.append(w)
            if words:
                found.setdefault(" ".join(words), page.name)
    return found


def test_every_command_the_pages_show_exists():
    shown = shown_commands()
    assert len(shown) > 30
    for words, page in shown.items():
        assert resolve(words.split()), f"{page}: `leukonet {words}`"


def test_docs_cli_lists_every_command():
    listed = set(re.findall(r"^\| `leukonet ([a-z0-9 -]+)` \|", text(ROOT / "docs" / "cli.md"), re.M))
    assert listed == leaf_commands()


def test_docs_api_lists_every_route_and_only_those(tmp_path):
    app = migrated_app(hub_config(tmp_path, None))
    try:
        rules = {
            (m, re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", r.rule))
            for r in app.url_map.iter_rules()
            if r.endpoint.startswith("api.")
            for m in r.methods - {"HEAD", "OPTIONS"}
        }
    finally:
        close_app(app)
    documented = set(
        re.findall(r"^\| (GET|POST|PUT|DELETE|PATCH) \| `([^`]+)` \|", text(ROOT / "docs" / "api.md"), re.M)
    )
    assert documented == rules
