"""The post rules on their own: no database, no network."""

import pytest

from post_svc.domain import (
    Limits,
    PostRuleBroken,
    check_author,
    check_not_blocked,
    compose,
    draft,
    revise,
)

LIMITS = Limits(text_max=10, content_warning_max=5, media_max=2)


def refused(call, *args, **kwargs) -> PostRuleBroken:
    with pytest.raises(PostRuleBroken) as caught:
        call(*args, **kwargs)
    return caught.value


def test_text_is_trimmed_and_its_tags_and_mentions_found():
    body = compose("  hi #Go @Ann ", Limits())
    assert (body.text, body.hashtags, body.mentions) == ("hi #Go @Ann", ["go"], ["ann"])


def test_a_hashtag_may_follow_japanese_text_directly():
    assert compose("今日の#ラーメン", Limits()).hashtags == ["ラーメン"]


def test_the_length_limit_counts_characters_not_bytes():
    assert compose("ラ" * 10, LIMITS).text == "ラ" * 10
    assert refused(compose, "x" * 11, LIMITS).field == "text"


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "\u3000"])
def test_blank_text_is_refused(text):
    error = refused(compose, text, LIMITS)
    assert (error.status, error.field) == (422, "text")


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b"])
def test_text_the_database_cannot_store_is_refused_as_bad_input(text):
    assert refused(compose, text, LIMITS).field == "text"


def test_a_blank_content_warning_is_no_content_warning():
    made = draft(text="x", visibility="public", reply_to=None, media_ids=[],
                 content_warning_text="  ", limits=LIMITS)
    assert made.content_warning is None


@pytest.mark.parametrize(("fields", "field"), [
    ({"media_ids": ["a", "b", "c"]}, "media_ids"),
    ({"media_ids": ["a", "a"]}, "media_ids"),
    ({"content_warning_text": "x" * 6}, "content_warning"),
])
def test_a_draft_over_the_limits_names_the_field(fields, field):
    arguments = {"text": "x", "visibility": "public", "reply_to": None, "media_ids": [],
                 "content_warning_text": None, "limits": LIMITS} | fields
    assert refused(draft, **arguments).field == field


def test_an_edit_must_change_something():
    assert refused(revise, given=set(), text=None, content_warning_text=None,
                   limits=LIMITS).status == 422


def test_an_edit_may_clear_the_content_warning_but_not_the_text():
    cleared = revise(given={"content_warning"}, text=None, content_warning_text=None,
                     limits=LIMITS)
    assert cleared.sets_content_warning and cleared.content_warning is None
    assert cleared.body is None
    assert refused(revise, given={"text"}, text=None, content_warning_text=None,
                   limits=LIMITS).field == "text"


def test_only_the_author_may_change_a_post():
    check_author("alice", "alice", "edit")
    assert refused(check_author, "alice", "bob", "edit").status == 403


def test_someone_the_author_blocked_is_refused():
    check_not_blocked(False, "reply to it")
    assert refused(check_not_blocked, True, "reply to it").status == 403
