"""Every route of the four services has an in-process test: the routes the apps serve are
compared with the `@pytest.mark.route` marks of this tier's tests (the conftest makes sure each
marked test calls its routes)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any

from _pytest.mark.structures import Mark, ParameterSet
from fastapi import FastAPI

import tests.inprocess
from tests.inprocess.conftest import SERVICES, AppMaker


def _marks(obj: Any) -> list[Mark]:
    marks = getattr(obj, "pytestmark", [])
    return list(marks) if isinstance(marks, list) else [marks]


def declared_routes() -> set[tuple[str, str]]:
    """(service, `METHOD /path`) of every route mark in the tier, parameters' marks too."""
    found: set[tuple[str, str]] = set()
    for info in pkgutil.iter_modules(tests.inprocess.__path__):
        module = importlib.import_module(f"tests.inprocess.{info.name}")
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("test_"):
                continue
            for mark in _marks(fn):
                if mark.name == "route":
                    found.add((mark.args[0], mark.args[1]))
                if mark.name == "parametrize":
                    for param in mark.args[1]:
                        if isinstance(param, ParameterSet):
                            found |= {
                                (m.args[0], m.args[1]) for m in param.marks if m.name == "route"
                            }
    return found


def served_routes(service: str, app: FastAPI) -> set[tuple[str, str]]:
    return {
        (service, f"{method} {route.path}")  # type: ignore[attr-defined]
        for route in app.routes
        for method in getattr(route, "methods", None) or ()
        if method != "HEAD"  # answered by the GET route
    }


def test_every_route_of_every_service_has_an_in_process_test(make: AppMaker) -> None:
    """The routes the four apps serve and the routes the tests name are the same set: a new
    route without a test, or a test naming a route that is gone, fails here."""
    served = set().union(*(served_routes(s, make(s)) for s in SERVICES))
    declared = declared_routes()
    assert sorted(served - declared) == [], "routes without an in-process test"
    assert sorted(declared - served) == [], "tests naming routes no service serves"
