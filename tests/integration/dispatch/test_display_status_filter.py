"""The per-recipient filter by display status (docs/states.md#engagement-and-display-status) is spelled as plain
conditions on send and delivery state (so that the database can use their indexes) rather than as the CASE that
labels each row: for every status and every combination of the columns the CASE reads, the two must select the same
rows."""

from __future__ import annotations

import itertools

from sqlalchemy import func, select, update

from edm import clock
from edm.db.session import unit_of_work
from edm.models.tasks import SubTask
from edm.tasks.reports import DisplayStatus, display_condition, display_status
from edm.vocabulary.tasks import DeliveryState, SendState
from tests import factories
from tests.integration.dispatch.conftest import DispatchKit

# Every value of each column the display status depends on (counts: none or some; times: unset or set).
COMBINATIONS = list(
    itertools.product(
        list(SendState),
        list(DeliveryState),
        (0, 2),  # attempts
        (0, 1),  # open_count
        (0, 1),  # click_count
        (False, True),  # unsubscribed
        (False, True),  # replied
    )
)


async def test_each_display_status_filter_selects_the_rows_its_label_names(dkit: DispatchKit) -> None:
    w = await factories.world(
        dkit.sessionmaker, dkit.settings, recipients=len(COMBINATIONS), services_=[{"name": "fake-a"}]
    )
    async with unit_of_work(dkit.sessionmaker) as session:
        task_id = await factories.task(
            session, w.user_id, sender_id=w.sender_id, template_ids=[w.template_id], rule={"type": "all_contacts"}
        )
    await dkit.generate(task_id)
    now = clock.utc_now()
    async with unit_of_work(dkit.sessionmaker) as session:
        ids = list(await session.scalars(select(SubTask.id).where(SubTask.task_id == task_id).order_by(SubTask.id)))
        assert len(ids) == len(COMBINATIONS)
        for subtask_id, (send, delivery, attempts, opens, clicks, unsubscribed, replied) in zip(
            ids, COMBINATIONS, strict=True
        ):
            await session.execute(
                update(SubTask)
                .where(SubTask.id == subtask_id)
                .values(
                    send_state=send,
                    service_id=None if send == SendState.PENDING else w.service_ids[0],
                    delivery_state=delivery,
                    attempts=attempts,
                    open_count=opens,
                    click_count=clicks,
                    unsubscribed_at=now if unsubscribed else None,
                    replied_at=now if replied else None,
                )
            )
    async with dkit.sessionmaker() as session:
        labelled = {
            status: set(
                await session.scalars(
                    select(SubTask.id).where(SubTask.task_id == task_id, display_status() == status.value)
                )
            )
            for status in DisplayStatus
        }
        assert sum(map(len, labelled.values())) == len(COMBINATIONS), "every row has exactly one label"
        for status in DisplayStatus:
            filtered = set(
                await session.scalars(select(SubTask.id).where(SubTask.task_id == task_id, display_condition(status)))
            )
            assert filtered == labelled[status], status
        assert all(labelled.values()), "the combinations reach every status"
        total = await session.scalar(select(func.count()).select_from(SubTask).where(SubTask.task_id == task_id))
        assert total == len(COMBINATIONS)
