"""The import preview (contacts.importer.preview_table): the first rows and the column plan an import would use,
for the console's mapping step; a file without an email column is shown, not refused."""

from __future__ import annotations

import io

import pytest

from edm.contacts.importer import ImportOptions, preview_table
from edm.errors import BadInput

CSV = "E-Mail,Vorname,Stadt\n" + "".join(f"p{i}@example.com,P{i},Berlin\n" for i in range(30))


def test_the_preview_shows_twenty_rows_and_the_automatic_plan() -> None:
    preview = preview_table(io.BytesIO(CSV.encode()), filename="people.csv", options=ImportOptions())
    assert preview.format == "csv" and preview.has_email
    assert [(c.header, c.kind, c.target) for c in preview.columns] == [
        ("E-Mail", "field", "email"),
        ("Vorname", "attribute", "Vorname"),
        ("Stadt", "attribute", "Stadt"),
    ]
    assert len(preview.rows) == 20 and preview.rows[0] == (2, ["p0@example.com", "P0", "Berlin"])


def test_a_mapping_wins_and_a_file_without_email_is_previewed() -> None:
    options = ImportOptions(mapping={"Vorname": "first_name", "Stadt": "ignore"})
    preview = preview_table(io.BytesIO(CSV.encode()), filename="people.csv", options=options, rows=2)
    assert [c.target for c in preview.columns] == ["email", "first_name", "ignore"] and len(preview.rows) == 2
    without = preview_table(io.BytesIO(b"who,city\nann,Paris\n"), filename="x.csv", options=ImportOptions())
    assert not without.has_email and without.rows == [(2, ["ann", "Paris"])]
    with pytest.raises(BadInput):
        preview_table(io.BytesIO(CSV.encode()), filename="x.csv", options=ImportOptions(mapping={"nope": "email"}))
