"""Who may do what on a node, from their affiliation and the channel's access model."""

from __future__ import annotations

from app.errors import Forbidden
from app.model import Affiliation
from app.store.base import NodeInfo


def check_read(node: NodeInfo, affiliation: Affiliation | None) -> None:
    if affiliation is Affiliation.OUTCAST:
        raise Forbidden(f"you are banned from {node.channel}")
    if node.access_model != "open" and affiliation is None:
        raise Forbidden(f"{node.channel} is private: follow it and wait for approval")


def check_post(node: NodeInfo, affiliation: Affiliation | None) -> None:
    check_read(node, affiliation)
    if affiliation is None or not affiliation.may_post:
        raise Forbidden(
            f"posting to {node.channel}/{node.name} needs the publisher role or higher; "
            f"yours is {affiliation.value if affiliation else 'none (follow it first)'}"
        )


def check_edit(node: NodeInfo, affiliation: Affiliation | None, caller: str, author: str) -> None:
    """Edit or delete a post: its author, the channel's owner or a moderator."""
    check_read(node, affiliation)
    if caller != author and not is_moderator(affiliation):
        raise Forbidden("only the author, the channel's owner or a moderator may change a post")


def check_moderate(node: NodeInfo, affiliation: Affiliation | None) -> None:
    if not is_moderator(affiliation):
        raise Forbidden(f"only the owner or a moderator of {node.channel} may do that")


def check_owner(node: NodeInfo, affiliation: Affiliation | None) -> None:
    if affiliation is not Affiliation.OWNER:
        raise Forbidden(f"only the owner of {node.channel} may do that")


def is_moderator(affiliation: Affiliation | None) -> bool:
    return affiliation is not None and affiliation.may_moderate
