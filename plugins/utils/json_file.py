"""Reading a JSON object file with errors that name the file."""
import json
import os
from typing import Optional, Type, Union


def read_json_object(path: Union[str, os.PathLike],
                     error: Type[Exception] = ValueError,
                     name: Optional[str] = None,
                     expected: str = '',
                     hint: str = '') -> dict:
    """The JSON object stored in ``path``.

    Annotation files, shard indexes and model configs are all one JSON
    object; the parser's own messages (``Expecting value: line 1 column
    13``) name neither the file nor what it should hold, so these do.

    Args:
        path (str | PathLike): the file.
        error (type): the exception raised (e.g. ``CheckpointError``).
        name (str, optional): how messages name the file (default ``path``).
        expected (str): what the object holds, for the not-an-object
            message (``'with a "weight_map"'``).
        hint (str): what such a file looks like, added to the syntax-error
            message.

    Raises:
        ``error``: the file is not UTF-8 text, not valid JSON (with the
            line and column) or not a JSON object.
    """
    name = name or str(path)
    try:
        with open(path, 'rb') as f:
            data = json.load(f)
    except UnicodeDecodeError as err:
        raise error(f'{name}: not a JSON text file ({err})') from err
    except json.JSONDecodeError as err:
        raise error(
            f'{name}: not valid JSON ({err.msg} at line {err.lineno} column '
            f'{err.colno})' + (f'; {hint}' if hint else '')) from err
    if not isinstance(data, dict):
        raise error(f'{name}: expected a JSON object'
                    + (f' {expected}' if expected else '')
                    + f', got a {type(data).__name__}')
    return data
