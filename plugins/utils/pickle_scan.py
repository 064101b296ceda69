"""List the globals a pickle imports, by parsing it (never unpickling)."""
import pickletools
from typing import List


def pickle_global_names(pickle_bytes: bytes) -> List[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL in the first pickle.

    :mod:`pickletools` only decodes opcodes; nothing is imported or called.
    For STACK_GLOBAL (protocol 4+) the two most recent string pushes are
    taken as module and name, which is how pickle writes them.  Stops at the
    first STOP opcode; a truncated stream ends the scan quietly.
    """
    names: List[str] = []
    recent: List[str] = []
    try:
        for opcode, arg, _ in pickletools.genops(pickle_bytes):
            if opcode.name == 'GLOBAL':
                module, name = arg.split(' ', 1)
                names.append(f'{module}.{name}')
            elif opcode.name == 'STACK_GLOBAL' and len(recent) >= 2:
                names.append(f'{recent[-2]}.{recent[-1]}')
            if isinstance(arg, str) and 'UNICODE' in opcode.name:
                recent.append(arg)
    except ValueError:  # truncated or not a pickle
        pass
    return list(dict.fromkeys(names))
