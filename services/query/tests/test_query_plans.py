"""The plans SQLite makes for the read side's hot statements, without statistics (a
service's database keeps none): each reads a range of an index, never a whole table."""

from chassis.testing import sqlite_plan
from query_svc.api import HOME
from query_svc.models import metadata
from query_svc.projections import _DELETE_FOR_POST, _FOLLOWERS
from query_svc.views import viewer_edges


def test_merging_popular_authors_walks_the_follows_not_every_post():
    """The read-time merge starts from the viewer's follows and probes each followed
    author's posts that were not fanned out: without statistics, SQLite once walked every
    public post instead (3.6 ms for that part of a home page among 15,000 posts)."""
    steps = sqlite_plan(metadata, HOME[1].statement, viewer="v", viewer_name="v", limit=21,
                        before="~")
    assert any("ix_posts_unfanned" in step for step in steps), steps
    assert not any("MULTI-INDEX OR" in step or "ix_posts_public" in step for step in steps)
    assert ("SEARCH edges USING COVERING INDEX ix_edges_source "
            "(kind=? AND source=? AND active=?)") in steps, steps


def test_fanning_out_reads_the_followers_from_the_index_alone():
    """A post's followers come from one index range, without a look at each edge's row."""
    steps = sqlite_plan(metadata, _FOLLOWERS, author="a")
    assert steps == ["SEARCH edges USING COVERING INDEX ix_edges_target "
                     "(kind=? AND target=? AND active=?)"], steps


def test_the_searchers_follows_and_blocks_are_looked_up_not_scanned():
    """Search reads whom the viewer follows, blocks and mutes, and who blocks them, by key:
    it once scanned every edge (0.27 ms among 3,500 edges, growing with them)."""
    steps = sqlite_plan(metadata, viewer_edges("v"))
    assert [step for step in steps if step.startswith("SEARCH")] == [
        "SEARCH edges USING COVERING INDEX ix_edges_source (kind=? AND source=? AND active=?)",
        "SEARCH edges USING COVERING INDEX ix_edges_target (kind=? AND target=? AND active=?)",
    ], steps


def test_an_edit_or_a_delete_finds_the_posts_tags_by_key():
    steps = sqlite_plan(metadata, _DELETE_FOR_POST["post_tags"], post_id="p")
    assert steps == ["SEARCH post_tags USING INDEX ix_post_tags_post (post_id=?)"], steps
