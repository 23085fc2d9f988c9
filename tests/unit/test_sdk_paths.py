"""Client-side path checks: everything outside the writable roots is refused before anything is sent."""

import pytest

from sandbox_operator import constants
from sandbox_operator.sdk.errors import PathOutsideSandbox
from sandbox_operator.sdk.paths import sandbox_path


@pytest.mark.parametrize(("given", "expected"), [
    ("/workspace/a.txt", "/workspace/a.txt"),
    ("a.txt", "/workspace/a.txt"),
    ("sub/dir/", "/workspace/sub/dir"),
    ("/workspace//x/./y", "/workspace/x/y"),
    ("//workspace/x", "/workspace/x"),
    ("/tmp/f", "/tmp/f"),
    ("/workspace", "/workspace"),
    ("/tmp", "/tmp"),
    ("./x", "/workspace/x"),
    ("/workspace/dots..in..name", "/workspace/dots..in..name"),
    ("/workspace/ünïcødé file", "/workspace/ünïcødé file"),
])
def test_accepted(given: str, expected: str) -> None:
    assert sandbox_path(given) == expected


@pytest.mark.parametrize(("given", "reason"), [
    ("/etc/passwd", "PathOutsideSandbox"),
    ("/", "PathOutsideSandbox"),
    ("/workspacex/a", "PathOutsideSandbox"),
    ("/tmpfoo", "PathOutsideSandbox"),
    ("/usr/local/bin/sandbox-exec", "PathOutsideSandbox"),
    ("../etc/passwd", "PathTraversal"),
    ("/workspace/../etc/passwd", "PathTraversal"),
    ("/workspace/a/../b", "PathTraversal"),
    ("/tmp/..", "PathTraversal"),
    ("a/../../x", "PathTraversal"),
    ("", "InvalidPath"),
    ("/workspace/a\x00b", "InvalidPath"),
    ("/workspace/" + "x" * 5000, "InvalidPath"),
])
def test_refused(given: str, reason: str) -> None:
    with pytest.raises(PathOutsideSandbox) as info:
        sandbox_path(given)
    assert info.value.reason == reason
    assert str(info.value)


def test_not_a_string() -> None:
    with pytest.raises(PathOutsideSandbox):
        sandbox_path(b"/workspace/x")  # type: ignore[arg-type]


@pytest.mark.parametrize("root", constants.WRITABLE_ROOTS)
def test_roots_cannot_be_deleted_or_replaced(root: str) -> None:
    assert sandbox_path(root) == root
    with pytest.raises(PathOutsideSandbox) as info:
        sandbox_path(root, allow_root=False)
    assert info.value.reason == "PathIsRoot"
    assert sandbox_path(root + "/x", allow_root=False) == root + "/x"


def test_message_names_the_roots() -> None:
    with pytest.raises(PathOutsideSandbox, match="/workspace or /tmp"):
        sandbox_path("/var/tmp/x")
