"""README.md and docs/*.md: every relative link and every repository path they mention exists."""
import os
import re

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Made by the scripts or the user (outputs, data), or outside the checkout.
PRODUCED = ("work/", "checkpoints/", "data-bin/", "../shared/")
# A path into the repository, e.g. `scripts/train_wmt14.sh`; not a piece of a URL or a longer path.
REPO_PATH = re.compile(r"(?<![\w./:$-])((?:\.\./shared|scripts|configs|one_layer_lottery|docs|tests|data|work"
                       r"|checkpoints|data-bin)/[\w.*/{},-]*[\w*/}])")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#+\s+(.*?)\s*$", re.M)


def _anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in HEADING.findall(markdown)}


def _exists(relative):
    """``relative`` (to the checkout) exists, is a file prefix (``--trainpref data/sample/train``)
    or a glob that matches, or is one of the PRODUCED paths."""
    if relative.startswith(PRODUCED):
        return True
    if "*" in relative:
        return any(ROOT.glob(relative))
    return (ROOT / relative).exists() or any(ROOT.glob(relative + ".*"))


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_somewhere(doc):
    text = doc.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        if path and not _exists(os.path.relpath(dest, ROOT)):
            broken.append(target)
        elif anchor and dest.suffix == ".md" and dest.exists() and anchor not in _anchors(dest.read_text()):
            broken.append(target)
    assert not broken, f"{doc.name}: broken links {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_mentioned_repository_paths_exist(doc):
    missing = sorted({p for p in REPO_PATH.findall(doc.read_text()) if not _exists(p)})
    assert not missing, f"{doc.name} mentions paths that do not exist: {missing}"


def test_the_readme_is_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = {target.partition("#")[0] for target in LINK.findall(readme)}
    unlinked = [p.name for p in DOCS[1:] if f"docs/{p.name}" not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"
