"""Imports every model module so `Base.metadata` is complete (Alembic, tests, create_all)."""

from edm.contacts import models as contacts  # noqa: F401
from edm.content import models as content  # noqa: F401
from edm.db.base import Base
from edm.email_services import models as email_services  # noqa: F401
from edm.events import models as events  # noqa: F401
from edm.ops import models as ops  # noqa: F401
from edm.suppressions import models as suppressions  # noqa: F401
from edm.tasks import models as tasks  # noqa: F401
from edm.tracking import models as tracking  # noqa: F401
from edm.users import models as users  # noqa: F401

metadata = Base.metadata
