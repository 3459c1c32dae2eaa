"""aviso-workflows: Aviso-compatible "data available" notifications in etcd for Airflow, ecFlow and scripts."""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AvisoWorkflowsError,
    PermissionDenied,
    SchemaError,
    StoreError,
    StoreUnavailable,
    ValidationError,
    WaitTimeout,
)
from .request import Request  # noqa: E402
from .schema import BUILTIN_SCHEMAS, EventSchema, SchemaRegistry, load_schemas  # noqa: E402
from .store import Notification, NotifyResult, Store  # noqa: E402

__all__ = [
    "__version__",
    "AvisoWorkflowsError",
    "BUILTIN_SCHEMAS",
    "EventSchema",
    "Notification",
    "NotifyResult",
    "PermissionDenied",
    "Request",
    "SchemaError",
    "SchemaRegistry",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "ValidationError",
    "WaitTimeout",
    "load_schemas",
]
