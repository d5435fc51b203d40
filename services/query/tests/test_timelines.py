"""Timelines and post views built from events: visibility, blocks, mutes, edits, deletes."""


from chassis.testing import assert_problem, wait_until
from profile_svc import events as graph


async def eventually(client, path, user, predicate, what):
    """Poll a read endpoint until `predicate(body)` holds (the read side is eventual)."""

    async def check() -> bool:
        response = await client.get(path, headers=user.headers)
        return response.status_code == 200 and predicate(response.json())

    await wait_until(check, what)


def ids(page) -> list[str]:
    return [item["id"] for item in page["items"]]


async def setup_users(bus, world, make_user, *names):
    users = [make_user(name) for name in names]
    bus.publish(*(world.profile(u) for u in users))
    return users


async def test_follower_sees_post_non_follower_does_not_see_followers_post(
        client, bus, world, make_user):
    alice, bob, carol = await setup_users(bus, world, make_user, "alice", "bob", "carol")
    bus.publish(world.edge(graph.Followed, bob, alice))
    await eventually(client, f"/api/timelines/users/{alice.user_id}", bob, lambda b: True,
                     "the read side answers")
    public = world.post(alice, "hello #ラーメン world")
    private = world.post(alice, "for my followers only", visibility="followers")
    bus.publish(public, private)
    both = [private.data["post_id"], public.data["post_id"]]
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == both,
                     "bob's home timeline has both posts, newest first")
    home = (await client.get("/api/timelines/home", headers=alice.headers)).json()
    assert ids(home) == both, "the author sees their own posts at home"
    view = home["items"][0]
    assert view["author"]["username"] == alice.username
    assert view["author"]["display_name"] == alice.username.title()
    assert view["like_count"] == 0 and view["liked_by_me"] is False

    carol_home = (await client.get("/api/timelines/home", headers=carol.headers)).json()
    assert ids(carol_home) == []
    alice_posts = (await client.get(f"/api/timelines/users/{alice.user_id}",
                                    headers=carol.headers)).json()
    assert ids(alice_posts) == [public.data["post_id"]], "followers-only post hidden"
    assert_problem(await client.get(f"/api/posts/{private.data['post_id']}",
                                    headers=carol.headers), 404)
    tag = (await client.get("/api/timelines/tags/%23ラーメン", headers=carol.headers)).json()
    assert ids(tag) == [public.data["post_id"]]
    public_tl = (await client.get("/api/timelines/public", headers=carol.headers)).json()
    assert public.data["post_id"] in ids(public_tl)
    assert private.data["post_id"] not in ids(public_tl)


async def test_direct_post_reaches_only_the_mentioned(client, bus, world, make_user):
    alice, bob, carol = await setup_users(bus, world, make_user, "alice", "bob", "carol")
    bus.publish(world.edge(graph.Followed, carol, alice))
    direct = world.post(alice, f"psst @{bob.username}", visibility="direct")
    bus.publish(direct)
    post_id = direct.data["post_id"]
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == [post_id],
                     "bob sees the direct post")
    assert (await client.get(f"/api/posts/{post_id}", headers=bob.headers)).status_code == 200
    assert ids((await client.get("/api/timelines/home", headers=carol.headers)).json()) == []
    assert_problem(await client.get(f"/api/posts/{post_id}", headers=carol.headers), 404)


async def test_block_and_mute_remove_an_author(client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    bus.publish(world.edge(graph.Followed, bob, alice))
    post = world.post(alice, "visible until blocked")
    bus.publish(post)
    post_id = post.data["post_id"]
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == [post_id],
                     "bob sees alice's post")
    bus.publish(world.edge(graph.Muted, bob, alice))
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == [],
                     "muting hides alice from bob's home")
    profile = (await client.get(f"/api/timelines/users/{alice.user_id}",
                                headers=bob.headers)).json()
    assert ids(profile) == [post_id], "a muted author's own page still shows their posts"
    bus.publish(world.edge(graph.Unmuted, bob, alice))
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == [post_id],
                     "unmuting brings the post back")
    bus.publish(world.edge(graph.Blocked, alice, bob), world.edge(graph.Unfollowed, bob, alice))
    await eventually(client, "/api/timelines/public", bob,
                     lambda b: post_id not in ids(b), "a block hides alice everywhere")
    assert ids((await client.get("/api/timelines/home", headers=bob.headers)).json()) == []
    assert_problem(await client.get(f"/api/posts/{post_id}", headers=bob.headers), 404)
    assert ids((await client.get(f"/api/timelines/users/{alice.user_id}",
                                 headers=bob.headers)).json()) == []


async def test_edits_deletes_history_likes_and_replies(client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    bus.publish(world.edge(graph.Followed, bob, alice))
    post = world.post(alice, "first text")
    post_id = post.data["post_id"]
    bus.publish(post, world.edit(post_id, "second text #edited"))
    await eventually(client, f"/api/posts/{post_id}", bob,
                     lambda b: b["text"] == "second text #edited", "the edit shows")
    history = (await client.get(f"/api/posts/{post_id}/history", headers=bob.headers)).json()
    assert [v["text"] for v in history["items"]] == ["second text #edited", "first text"]
    reply = world.post(bob, "a reply", reply_to=post_id)
    bus.publish(reply, world.like(bob, post_id))
    await eventually(client, f"/api/posts/{post_id}", bob,
                     lambda b: b["like_count"] == 1 and b["reply_count"] == 1
                     and b["liked_by_me"], "like and reply are counted")
    seen_by_alice = (await client.get(f"/api/posts/{post_id}", headers=alice.headers)).json()
    assert seen_by_alice["liked_by_me"] is False
    replies = (await client.get(f"/api/posts/{post_id}/replies", headers=alice.headers)).json()
    assert ids(replies) == [reply.data["post_id"]]
    tagged = (await client.get("/api/timelines/tags/edited", headers=bob.headers)).json()
    assert ids(tagged) == [post_id]

    bus.publish(world.like(bob, post_id, undo=True), world.delete(post_id))
    await eventually(client, "/api/timelines/home", bob,
                     lambda b: ids(b) == [reply.data["post_id"]], "the deleted post is gone")
    assert_problem(await client.get(f"/api/posts/{post_id}", headers=bob.headers), 404)
    assert ids((await client.get("/api/timelines/tags/edited", headers=bob.headers)).json()) == []


async def test_follow_backfills_unfollow_removes(client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    posts = [world.post(alice, f"old post {i}") for i in range(3)]
    bus.publish(*posts)
    newest_first = [p.data["post_id"] for p in reversed(posts)]
    await eventually(client, f"/api/timelines/users/{alice.user_id}", bob,
                     lambda b: ids(b) == newest_first, "alice's posts are read")
    bus.publish(world.edge(graph.Followed, bob, alice))
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == newest_first,
                     "following backfills alice's recent posts")
    bus.publish(world.edge(graph.Unfollowed, bob, alice))
    await eventually(client, "/api/timelines/home", bob, lambda b: ids(b) == [],
                     "unfollowing removes them")


async def test_popular_authors_are_merged_at_read_time(client, bus, world, make_user):
    """With fanout_threshold=3, an author with 3 followers is not fanned out: their posts
    are merged into their followers' home timelines at read time, with the same visibility,
    mute and block rules as fanned-out posts."""
    star, *fans = await setup_users(bus, world, make_user, "star", "f1", "f2", "f3")
    bus.publish(*(world.edge(graph.Followed, fan, star) for fan in fans))
    await eventually(client, f"/api/search?q={star.username}&type=users", star,
                     lambda b: [u["followers_count"] for u in b["items"]] == [3],
                     "the star has three followers")
    post = world.post(star, "to all my fans")
    private = world.post(star, "to my followers only", visibility="followers")
    direct = world.post(star, f"just you @{fans[0].username}", visibility="direct")
    bus.publish(post, private, direct)
    shown = [private.data["post_id"], post.data["post_id"]]
    await eventually(client, "/api/timelines/home", fans[0],
                     lambda b: ids(b) == [direct.data["post_id"], *shown],
                     "the mentioned fan sees the direct post too")
    for fan in fans[1:]:
        await eventually(client, "/api/timelines/home", fan, lambda b: ids(b) == shown,
                         "a fan sees the public and followers-only posts")
    from sqlalchemy import select

    from query_svc.models import posts, timeline

    async with client.app.state.db.sessions() as session:
        fanned = (await session.execute(select(posts.c.fanned_out).where(
            posts.c.id == post.data["post_id"]))).scalar_one()
        entries = (await session.execute(select(timeline.c.user_id).where(
            timeline.c.post_id == post.data["post_id"]))).scalars().all()
    assert fanned is False and entries == [star.user_id]
    bus.publish(world.edge(graph.Muted, fans[1], star), world.edge(graph.Blocked, star, fans[2]))
    for fan in fans[1:]:
        await eventually(client, "/api/timelines/home", fan, lambda b: ids(b) == [],
                         "a mute or a block hides the star's merged posts")


async def test_pages_are_full_while_results_remain(client, bus, world, make_user):
    alice, bob, spammer = await setup_users(bus, world, make_user, "alice", "bob", "spam")
    bus.publish(world.edge(graph.Blocked, bob, spammer))
    mine = [world.post(alice, f"post {i}") for i in range(5)]
    spam = [world.post(spammer, f"spam {i}") for i in range(12)]
    bus.publish(*mine, *spam)
    expected = sorted((p.data["post_id"] for p in mine), reverse=True)

    async def all_pages() -> list[str]:
        seen, cursor = [], None
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await client.get("/api/timelines/public", params=params,
                                     headers=bob.headers)).json()
            if page["next_cursor"]:
                assert len(page["items"]) == 2, "a page is full while more remain"
            seen += ids(page)
            cursor = page["next_cursor"]
            if not cursor:
                return seen

    await eventually(client, "/api/timelines/public", alice,
                     lambda b: len(b["items"]) == 17, "all posts are read")
    assert [i for i in await all_pages() if i in expected] == expected
    assert set(await all_pages()).isdisjoint(p.data["post_id"] for p in spam)


async def test_bad_input_is_a_clear_4xx(client, make_user):
    user = make_user("bad")
    body = assert_problem(await client.get("/api/timelines/home?cursor=%%%",
                                           headers=user.headers), 400)
    assert body["errors"][0]["field"] == "cursor"
    assert_problem(await client.get("/api/timelines/home?cursor=bm90LWpzb24",
                                    headers=user.headers), 400)
    body = assert_problem(await client.get("/api/timelines/public?limit=100000",
                                           headers=user.headers), 422)
    assert "limit" in str(body)
    assert_problem(await client.get("/api/posts/nope", headers=user.headers), 404)
    assert_problem(await client.get("/api/timelines/home"), 401)
    assert_problem(await client.get("/api/timelines/home",
                                    headers={"Authorization": "Bearer garbage"}), 401)
    assert_problem(await client.get("/api/search?q=x&channel_id=c1", headers=user.headers), 422)
    assert_problem(await client.get("/api/search?q=", headers=user.headers), 422)
    assert_problem(await client.get("/api/search?q=" + "x" * 501, headers=user.headers), 422)
    assert_problem(await client.get("/api/timelines/tags/%23", headers=user.headers), 422)


async def test_media_views_reach_post_views_timelines_and_search(client, bus, world, make_user):
    alice, bob = await setup_users(bus, world, make_user, "alice", "bob")
    bus.publish(world.edge(graph.Followed, bob, alice))
    photo = {"media_id": "01JMEDIA0000000000000000AA", "kind": "image", "status": "ready",
             "alt_text": "a bowl of ramen", "width": 1200, "height": 900, "blurhash": "LKO2?U%2",
             "variants": {"thumb": "http://cdn.test/media/a/thumb.webp",
                          "large": "http://cdn.test/media/a/large.webp"}}
    with_photo = world.post(alice, "lunch with a photo", media=[photo])
    plain = world.post(alice, "lunch without one")
    bus.publish(with_photo, plain)
    await eventually(client, "/api/timelines/home", bob, lambda b: len(b["items"]) == 2,
                     "bob's home timeline has both posts")
    home = (await client.get("/api/timelines/home", headers=bob.headers)).json()
    by_id = {item["id"]: item for item in home["items"]}
    [shown] = by_id[with_photo.data["post_id"]]["media"]
    assert shown["alt_text"] == "a bowl of ramen" and shown["variants"] == photo["variants"]
    assert (shown["width"], shown["height"], shown["status"]) == (1200, 900, "ready")
    assert by_id[plain.data["post_id"]]["media"] == []
    view = (await client.get(f"/api/posts/{with_photo.data['post_id']}",
                             headers=bob.headers)).json()
    assert view["media"][0]["media_id"] == photo["media_id"]
    await eventually(client, "/api/search?q=lunch%20has:media", bob,
                     lambda b: ids(b) == [with_photo.data["post_id"]],
                     "has:media finds only the post with a photo")
