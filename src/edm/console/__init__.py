"""The web console (docs/console.md): server-rendered pages for people, mounted at `/` beside the API.

An entry point like `edm.api` and `edm.cli`: its routes parse a request, check who is asking, call the same
domain services as the API handlers inside the request's unit of work (`edm.api.deps.Session`), and render a
Jinja2 template. It runs no SQL of its own.

- `routing.py`: `new_router()`, whose routes turn every error into an HTML page (never a stack trace)
- `auth.py`: the `Viewer` dependency (session cookie, CSRF, read-only refusal, forced password change)
- `rendering.py`: the Jinja2 environments (one per language), filters, `render()`, security headers
- `i18n.py`: the catalogues under `locale/`, compiled in memory at start-up; language negotiation
- `forms.py`: reading a form, validating it with the API's request models, errors kept beside their fields
- `errors.py`: machine error codes → translatable messages; the error pages
- `pages.py`: the registry of console pages (the menu, and which links are live)
- `static.py`: `/static/…`, content-hashed URLs with a year of caching
- `login.py`, `dashboard.py`, `account.py`: the pages; `public.py`: the public pages of `/u/…`
- `routers.py`: what `edm.app` mounts
"""
