"""Reading YAML and JSON documents (listener files, request files) with one error style.

Every failure is a ValidationError naming what the file is, its path and why, on one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_document(path: str | Path, what: str) -> Any:
    """The parsed YAML (or JSON, a subset of YAML) document at ``path``; ``what`` names it in errors."""
    from .errors import ValidationError

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise ValidationError(what, str(path), f"cannot be read ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ValidationError(what, str(path), f"is not UTF-8 text ({error.reason} at byte {error.start})") from None
    except ValueError as error:  # a NUL character in the path
        raise ValidationError(what, str(path), f"cannot be read ({error})") from None
    except yaml.YAMLError as error:
        first = str(error).strip().splitlines()
        raise ValidationError(what, str(path), f"is not valid YAML ({' '.join(first[:3])})") from None
    except RecursionError:
        raise ValidationError(what, str(path), f"is nested too deeply to be a {what}") from None
