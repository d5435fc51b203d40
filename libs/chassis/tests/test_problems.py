"""Every error is an RFC 9457 problem+json response, and none shows a stack trace."""

from fastapi import APIRouter
from pydantic import BaseModel, Field

from chassis.problems import invalid, not_found
from chassis.testing import assert_problem

router = APIRouter()


class NewNote(BaseModel):
    title: str = Field(min_length=1, max_length=20)
    stars: int = 0


@router.post("/notes", status_code=201)
async def create_note(note: NewNote) -> NewNote:
    """Echo a valid note."""
    return note


@router.get("/notes/{note_id}")
async def read_note(note_id: int) -> dict[str, int]:
    """Only note 1 exists; note 13 is refused by a domain rule."""
    if note_id == 13:
        raise invalid("note_id", "must not be unlucky")
    if note_id != 1:
        raise not_found("note")
    return {"id": note_id}


@router.get("/explode")
async def explode() -> None:
    """A bug."""
    raise RuntimeError("secret-internal-detail at /srv/app.py line 42")


async def test_an_unknown_path_is_a_404_problem(serve):
    async with serve(router) as client:
        body = assert_problem(await client.get("/nowhere"), 404)
    assert body["instance"] == "/nowhere"


async def test_a_wrong_method_is_a_405_problem(serve):
    async with serve(router) as client:
        response = await client.delete("/notes")
    assert_problem(response, 405)
    assert "POST" in response.headers["allow"]


async def test_a_missing_resource_is_a_404_problem_naming_it(serve):
    async with serve(router) as client:
        body = assert_problem(await client.get("/notes/2"), 404)
    assert body["detail"] == "note not found"


async def test_a_validation_error_is_a_422_naming_the_field(serve):
    async with serve(router) as client:
        body = assert_problem(await client.post("/notes", json={"title": "", "stars": 1}), 422)
    assert [e["field"] for e in body["errors"]] == ["title"]
    assert body["detail"].startswith("title: ")


async def test_a_bad_path_parameter_is_a_422_naming_it(serve):
    async with serve(router) as client:
        body = assert_problem(await client.get("/notes/abc"), 422)
    assert [e["field"] for e in body["errors"]] == ["note_id"]


async def test_a_domain_rule_names_the_field_it_refuses(serve):
    async with serve(router) as client:
        body = assert_problem(await client.get("/notes/13"), 422)
    assert body["errors"] == [{"field": "note_id", "message": "must not be unlucky"}]


async def test_a_body_over_the_limit_is_a_413_when_its_length_is_declared(serve):
    async with serve(router, max_body_bytes=1024) as client:
        response = await client.post("/notes", content=b"{" + b" " * 2000 + b"}",
                                     headers={"Content-Type": "application/json"})
    assert_problem(response, 413)


async def test_a_chunked_body_over_the_limit_is_a_413(serve):
    async def chunks():
        yield b'{"title": "x", "stars": 1'
        for _ in range(10):
            yield b" " * 500
        yield b"}"

    async with serve(router, max_body_bytes=1024) as client:
        response = await client.post("/notes", content=chunks(),
                                     headers={"Content-Type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_a_body_under_the_limit_is_accepted(serve):
    async with serve(router, max_body_bytes=1024) as client:
        response = await client.post("/notes", json={"title": "fine", "stars": 3})
    assert response.status_code == 201
    assert response.json() == {"title": "fine", "stars": 3}


async def test_an_unexpected_exception_is_a_500_problem_without_internals(serve):
    async with serve(router) as client:
        response = await client.get("/explode")
    body = assert_problem(response, 500)
    assert "secret-internal-detail" not in response.text
    assert "Traceback" not in response.text and "RuntimeError" not in response.text
    assert body["detail"] == "an unexpected error occurred"
