"""Route ``backbone = "surgeryclip"`` through Open-GroundingDino's
``build_backbone`` without editing its files.

:func:`apply` wraps ``models.GroundingDINO.backbone.backbone.build_backbone``:
for ``args.backbone == 'surgeryclip'`` it builds
:func:`~.surgeryclip_backbone.build_surgeryclip_backbone`'s module, joins it
with Open-GroundingDino's own position encoding (``Joiner``) and sets
``num_channels``; every other backbone name goes to the original function.
The wrapper is installed in every loaded module that holds the original by
name (``models.GroundingDINO.groundingdino`` imports it with ``from
.backbone import build_backbone``), so call :func:`apply` after importing
Open-GroundingDino's ``models`` package and before building the model.
"""
import functools
import importlib
import sys
from typing import Any, Dict, List

from .surgeryclip_backbone import build_surgeryclip_backbone

#: ``args.backbone`` value that selects SurgeryCLIP.
BACKBONE_NAME = 'surgeryclip'
#: Open-GroundingDino's module defining ``build_backbone`` and ``Joiner``.
HOST_MODULE = 'models.GroundingDINO.backbone.backbone'


def build_joined_backbone(args: Any, host: Any) -> Any:
    """SurgeryCLIP + the host's position encoding, as ``build_backbone``
    returns it (a ``Joiner`` with ``num_channels``)."""
    indices = list(getattr(args, 'return_interm_indices', [3]))
    if len(indices) != 1:
        raise ValueError(
            f'backbone "{BACKBONE_NAME}" has one feature map; set '
            f'return_interm_indices = [3] (got {indices})')
    position_embedding = host.build_position_encoding(args)
    backbone, num_channels = build_surgeryclip_backbone(args)
    model = host.Joiner(backbone, position_embedding)
    model.num_channels = num_channels
    return model


def apply(host_module: str = HOST_MODULE) -> Dict[str, List[str]]:
    """Install the wrapper (idempotent).

    Returns:
        dict: ``{'patched': [module names where build_backbone was
        replaced]}`` (empty when already applied).

    Raises:
        ImportError: Open-GroundingDino is not importable: not found (run
            from its checkout or put it on ``PYTHONPATH``), or failing on
            import (e.g. without its compiled ``MultiScaleDeformableAttention``
            op, which its ``ms_deform_attn.py`` requires and which builds only
            with CUDA); the message names the module and the error.
    """
    try:
        host = importlib.import_module(host_module)
    except Exception as err:  # noqa: BLE001 -- re-raised, naming the module
        top = host_module.split('.')[0]
        not_found = isinstance(err, ImportError) and err.name and \
            host_module.startswith(err.name) and err.name.split('.')[0] == top
        fix = ('run from the Open-GroundingDino checkout or add it to '
               'PYTHONPATH' if not_found else
               'Open-GroundingDino itself fails to import here; see '
               '"Drop-in steps" in docs/integrations/open_groundingdino.md')
        raise ImportError(f'cannot import {host_module} '
                          f'({type(err).__name__}: {err}); {fix}') from err
    original = host.build_backbone
    if getattr(original, '_surgeryclip_wrapper', False):
        return {'patched': []}

    @functools.wraps(original)
    def build_backbone(args):
        if getattr(args, 'backbone', None) != BACKBONE_NAME:
            return original(args)
        return build_joined_backbone(args, host)

    build_backbone._surgeryclip_wrapper = True
    patched = []
    for name, module in list(sys.modules.items()):
        if module is not None and \
                getattr(module, 'build_backbone', None) is original:
            setattr(module, 'build_backbone', build_backbone)
            patched.append(name)
    return {'patched': sorted(patched)}
