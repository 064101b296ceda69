"""A Runner whose checkpoints (and ``last_checkpoint``) are written
atomically, that cleans up after killed saves and resumes past a damaged
``last_checkpoint``."""
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional, Tuple

from mmengine.dist import is_main_process
from mmengine.hooks import CheckpointHook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

#: The file mmengine's CheckpointHook writes the latest checkpoint's path to.
LAST_CHECKPOINT = 'last_checkpoint'

#: What this runner leaves behind when killed mid-save: ``.iter_8.pth.tmp-PID``
#: (a checkpoint being written) and ``.last_checkpoint.tmp-PID/`` (the folder
#: ``last_checkpoint`` is staged in).  Nothing else is ever removed.
STALE_TEMPORARY = re.compile(
    r'^\.(?P<name>[^/]+\.pth|last_checkpoint)\.tmp-(?P<pid>\d+)$')

#: The checkpoint names ``--resume auto`` falls back to, with their step.
CHECKPOINT_NAME = re.compile(r'^(?:iter|epoch)_(?P<step>\d+)\.pth$')


def temporary_name(name: str) -> str:
    """The hidden name ``name`` is written under before the rename:
    ``.NAME.tmp-PID`` (one writer per process)."""
    return f'.{name}.tmp-{os.getpid()}'


def _process_running(pid: int) -> bool:
    if pid == os.getpid():
        # Called before this process saves anything: a leftover with our PID
        # is from an earlier process that had the same PID (containers).
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return False
    return True


def remove_stale_temporaries(work_dir: str) -> Tuple[List[str], List[str]]:
    """Delete this runner's leftovers of killed saves in ``work_dir``.

    Only entries directly in ``work_dir`` whose name matches
    :data:`STALE_TEMPORARY` and whose writer process is no longer running
    are removed; a staging folder only when it holds nothing but
    ``last_checkpoint``.

    Args:
        work_dir (str): the run's work dir.

    Returns:
        tuple[list[str], list[str]]: the names removed, and the names kept
        because the process that writes them is still running.
    """
    removed, kept = [], []
    if not osp.isdir(work_dir):
        return removed, kept
    for name in sorted(os.listdir(work_dir)):
        match = STALE_TEMPORARY.match(name)
        if match is None:
            continue
        if _process_running(int(match['pid'])):
            kept.append(name)
            continue
        path = osp.join(work_dir, name)
        if match['name'] == LAST_CHECKPOINT and osp.isdir(path) and \
                not osp.islink(path):
            inside = os.listdir(path)
            if set(inside) - {LAST_CHECKPOINT}:
                continue  # not a folder this runner made
            for entry in inside:
                os.remove(osp.join(path, entry))
            os.rmdir(path)
        elif osp.isfile(path) or osp.islink(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed, kept


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a whole torch checkpoint: torch writes a zip
    archive, whose directory sits at the very end of the file, so a file
    cut short by a kill fails this test."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def find_resume_checkpoint(work_dir: str) -> Tuple[Optional[str],
                                                   Optional[str]]:
    """The checkpoint ``--resume auto`` continues from.

    ``work_dir/last_checkpoint`` when it names an existing file (what
    mmengine does); when it is missing, empty or names a missing file, the
    newest complete ``iter_N.pth`` / ``epoch_N.pth`` in ``work_dir``
    (largest ``N``; incomplete files skipped).

    Args:
        work_dir (str): the run's work dir.

    Returns:
        tuple[str | None, str | None]: the checkpoint path (None: nothing to
        resume from, train from the start), and None when
        ``last_checkpoint`` was used, else a sentence saying what was wrong
        with it and what was chosen instead.
    """
    record = osp.join(work_dir, LAST_CHECKPOINT)
    if osp.isfile(record):
        with open(record) as f:
            named = f.read().strip()
        if named and osp.isfile(named):
            return named, None
        problem = (f'{record} names {named}, which does not exist' if named
                   else f'{record} is empty')
    else:
        problem = f'there is no {record}'
    candidates = []
    for name in os.listdir(work_dir) if osp.isdir(work_dir) else ():
        match = CHECKPOINT_NAME.match(name)
        path = osp.join(work_dir, name)
        if match and osp.isfile(path):
            candidates.append((int(match['step']), osp.getmtime(path), path))
    skipped = []
    for _, _, path in sorted(candidates, reverse=True):
        if is_complete_checkpoint(path):
            note = (f' (skipped incomplete {", ".join(skipped)})'
                    if skipped else '')
            return path, (f'{problem}; resuming from the newest complete '
                          f'checkpoint in the work dir, {path}{note}')
        skipped.append(osp.basename(path))
    if skipped:
        return None, (f'{problem} and no checkpoint in {work_dir} is '
                      f'complete ({", ".join(skipped)}); training starts '
                      'from the beginning')
    return None, (f'{problem} and {work_dir} holds no iter_*.pth or '
                  'epoch_*.pth; training starts from the beginning')


class _WorkDirRedirect:
    """The runner as a hook sees it, except for ``work_dir``.

    mmengine's ``CheckpointHook`` writes ``runner.work_dir/last_checkpoint``
    in place (``open('w')``: a kill between truncate and write leaves it
    empty); pointed at a staging folder, the file can be renamed into place.
    """

    def __init__(self, runner, work_dir: str):
        self.__dict__.update(_runner=runner, work_dir=work_dir)

    def __getattr__(self, name):
        return getattr(self.__dict__['_runner'], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__['_runner'], name, value)


class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` whose ``last_checkpoint`` is replaced
    atomically: written in ``work_dir/.last_checkpoint.tmp-PID/`` and renamed
    over ``work_dir/last_checkpoint`` (``os.replace``), so the file always
    names the previous or the new checkpoint, never nothing.

    :class:`AtomicCheckpointRunner` uses it wherever a config says
    ``CheckpointHook``; the arguments are ``CheckpointHook``'s.
    """

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not is_main_process():  # only the main process writes the file
            return super()._save_checkpoint_with_step(runner, step, meta)
        staging = osp.join(runner.work_dir, temporary_name(LAST_CHECKPOINT))
        os.makedirs(staging, exist_ok=True)
        try:
            super()._save_checkpoint_with_step(
                _WorkDirRedirect(runner, staging), step, meta)
            staged = osp.join(staging, LAST_CHECKPOINT)
            if osp.isfile(staged):
                os.replace(staged, osp.join(runner.work_dir, LAST_CHECKPOINT))
        finally:
            if osp.isdir(staging) and not os.listdir(staging):
                os.rmdir(staging)


# mmengine's root registry: both our tools/train.py and mmdet's build the
# runner with `mmengine.registry.RUNNERS.build(cfg)` before any scope is set.
@RUNNERS.register_module()
class AtomicCheckpointRunner(Runner):
    """mmengine's ``Runner``, but a checkpoint appears only once complete.

    mmengine writes ``iter_N.pth`` in place, so a job killed mid-save (a
    pre-empted cluster node, an OOM kill) leaves a truncated file that
    ``--resume auto`` then picks up.  Here the checkpoint is written to a
    hidden temporary file in the same folder and renamed over the final name
    (``os.replace`` is atomic on POSIX), so the final name only ever holds a
    complete checkpoint and the previous one stays untouched until then.
    ``last_checkpoint`` is renamed into place the same way
    (:class:`AtomicCheckpointHook` replaces the config's ``CheckpointHook``).

    At the start of training and on resume, the temporary files of killed
    saves (``.iter_N.pth.tmp-PID``, nothing else) are removed from the work
    dir, in one log line.  ``--resume auto`` (``resume=True`` without
    ``load_from``) continues from the newest complete ``iter_*.pth`` /
    ``epoch_*.pth`` when ``last_checkpoint`` is missing, empty or names a
    missing file, and says so (:func:`find_resume_checkpoint`).

    Select it with ``runner_type = 'AtomicCheckpointRunner'`` (every config
    of this project does, via ``configs/_base_/default_runtime.py``).  Keep
    ``CheckpointHook(max_keep_ckpts>=2)``: mmengine deletes the oldest
    checkpoint *before* saving the next one.
    """

    def register_hook(self, hook, priority=None) -> None:
        if isinstance(hook, dict) and hook.get('type') in ('CheckpointHook',
                                                            CheckpointHook):
            hook = dict(hook, type=AtomicCheckpointHook)
        super().register_hook(hook, priority)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs):
        if not osp.isdir(out_dir):
            # Remote backends (e.g. s3): no atomic rename to rely on.
            return super().save_checkpoint(out_dir, filename, *args, **kwargs)
        tmp_name = temporary_name(filename)
        super().save_checkpoint(out_dir, tmp_name, *args, **kwargs)
        if is_main_process():
            os.replace(osp.join(out_dir, tmp_name), osp.join(out_dir, filename))

    def remove_stale_temporaries(self) -> List[str]:
        """Remove the work dir's leftovers of killed saves (main process
        only), logging one line when there were any; return their names."""
        if not is_main_process():
            return []
        removed, kept = remove_stale_temporaries(self.work_dir)
        if removed or kept:
            line = (f'removed {len(removed)} temporary file(s) of killed '
                    f'checkpoint saves from {self.work_dir}: '
                    f'{", ".join(removed) or "none"}')
            if kept:
                line += (f' (kept {", ".join(kept)}: the process writing '
                         'them is running)')
            self.logger.info(line)
        return removed

    def train(self):
        self.remove_stale_temporaries()
        return super().train()

    def resume(self, filename: str, *args, **kwargs) -> None:
        self.remove_stale_temporaries()
        return super().resume(filename, *args, **kwargs)

    def load_or_resume(self) -> None:
        if not self._has_loaded and self._resume and self._load_from is None:
            path, problem = find_resume_checkpoint(self.work_dir)
            if problem is None:
                self.logger.info(f'--resume auto: resuming from {path} '
                                 f'(named by {LAST_CHECKPOINT})')
            elif path is None and not osp.exists(
                    osp.join(self.work_dir, LAST_CHECKPOINT)):
                self.logger.info(f'--resume auto: {problem}')  # a first run
            else:
                self.logger.warning(f'--resume auto: {problem}')
            if path is None:
                # mmengine would read the broken last_checkpoint again and
                # fail on an empty name: start fresh, as it does without one.
                self._resume = False
            self._load_from = path
        super().load_or_resume()
