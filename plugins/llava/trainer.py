"""DeepSpeed training loop for the LLaVA-Phi segmentation model.

``tools/train_llava.py`` parses PSALM's argument names and calls
:func:`train`.  The pieces around the loop live beside it: the process
group and data sharding in :mod:`.distributed`, model/tokenizer/adapter
set-up in :mod:`.building`, checkpoints in :mod:`.ds_checkpoint`.
"""
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, List

import torch
from torch.utils.data import DataLoader

from .building import (build_model, build_tokenizer, compute_dtype,
                       load_adapter, match_batchnorm_buffers)
from .data import ToyReferringSegDataset, collate_referring
from .distributed import EpochSampler, init_distributed, mean_over_ranks
from .ds_checkpoint import resume_location, save_checkpoint, use_safe_loading
from .ds_config import resolve_ds_config
from .model import LlavaPhiSegModel
from .projector_summary import describe_projector

logger = logging.getLogger('plugins.llava.train')

LOSS_NAMES = ('loss', 'loss_llm', 'loss_mask', 'loss_dice')


def setup_logging(rank: int, output_dir: Path) -> None:
    """INFO to stdout (rank 0) and to ``output_dir/train.log``."""
    fmt = logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s',
                            datefmt='%H:%M:%S')
    root = logging.getLogger('plugins')
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / 'train.log')
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith('.bias') else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0)]


def _lr_lambda(total_steps: int, warmup_steps: int):
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def _log_step(record: dict, total_steps: int) -> None:
    losses = ' | '.join(f'{k} {record[k]:.4f}' for k in LOSS_NAMES
                        if k in record)
    logger.info('step %d/%d | %s | lr %.2e | %.2f s/step', record['step'],
                total_steps, losses, record['lr'], record['sec_per_step'])


class LlavaTrainer:
    """Builds model, data and DeepSpeed engine from the parsed arguments of
    ``tools/train_llava.py``; :meth:`train` runs the loop.

    One optimizer step = ``gradient_accumulation_steps`` micro-batches of
    ``per_device_train_batch_size`` on every rank. ``metrics.jsonl`` in the
    output folder gets one record per step (losses averaged over the step's
    micro-batches and the ranks).
    """

    def __init__(self, args):
        self.args = args
        self.rank, self.world = init_distributed()
        self.output_dir = Path(args.output_dir)
        setup_logging(self.rank, self.output_dir)
        torch.manual_seed(args.seed)
        self.device = self._device()

        self.tokenizer = build_tokenizer(args)
        model, self.config = build_model(args, self.tokenizer)
        # The builder logs the deformable projector's type and settings as
        # it builds it; this line describes any type, with its size.
        logger.info(describe_projector(model.mm_projector, self.config))
        if args.pretrain_mm_mlp_adapter:
            load_adapter(model, args.pretrain_mm_mlp_adapter)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        logger.info('trainable parameters: %s (vision tower frozen: %s, %s)',
                    f'{model.trainable_parameter_count():,}',
                    self.config.freeze_vision_tower, model.vision_tower.dtype)

        self._build_data()
        self._build_engine(model)
        if self.rank == 0:
            self.config.save(self.output_dir / 'config.json')
            self.tokenizer.save_pretrained(str(self.output_dir / 'tokenizer'))
            with open(self.output_dir / 'ds_config.json', 'w') as f:
                json.dump(self.ds_config, f, indent=2)

    def _device(self) -> torch.device:
        from deepspeed.accelerator import get_accelerator
        accelerator = get_accelerator()
        if self.args.fp16 and not accelerator.is_fp16_supported():
            raise ValueError(f'--fp16 is not supported by DeepSpeed\'s '
                             f'{accelerator.device_name()} accelerator; use '
                             '--bf16 (fp16 needs a GPU)')
        return torch.device(accelerator.device_name(
            int(os.environ.get('LOCAL_RANK', 0))))

    def _build_data(self) -> None:
        args = self.args
        self.dataset = ToyReferringSegDataset(
            args.data_root, self.tokenizer, split='train',
            image_size=self.config.image_size, ann_file=args.ann_file)
        self.sampler = EpochSampler(len(self.dataset), self.rank, self.world,
                                     args.seed)
        self.micro_bs = args.per_device_train_batch_size
        self.accum = args.gradient_accumulation_steps
        pad_id = self.tokenizer.pad_token_id
        self.loader = DataLoader(
            self.dataset, batch_size=self.micro_bs, sampler=self.sampler,
            drop_last=True, num_workers=args.dataloader_num_workers,
            collate_fn=lambda b: collate_referring(b, pad_id))
        self.micro_per_epoch = (len(self.dataset) // self.world) // self.micro_bs
        if self.micro_per_epoch == 0:
            raise ValueError(f'{len(self.dataset)} samples on {self.world} '
                             f'ranks give no batch of {self.micro_bs}')
        self.total_steps = args.max_steps if args.max_steps > 0 else math.ceil(
            args.num_train_epochs * self.micro_per_epoch / self.accum)

    def _build_engine(self, model: LlavaPhiSegModel) -> None:
        import deepspeed
        args = self.args
        if args.bf16 or args.fp16:
            match_batchnorm_buffers(model, compute_dtype(args))
        optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay),
                                      lr=args.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(self.total_steps,
                                  int(args.warmup_ratio * self.total_steps)))
        self.ds_config = resolve_ds_config(
            args.deepspeed, micro_batch_size=self.micro_bs,
            grad_accum_steps=self.accum, world_size=self.world,
            bf16=args.bf16, fp16=args.fp16,
            hidden_size=self.config.hidden_size,
            max_grad_norm=args.max_grad_norm)
        self.zero_stage = self.ds_config.get('zero_optimization',
                                             {}).get('stage', 0)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.scheduler,
            config=self.ds_config)

    def resume(self, location: str) -> int:
        """Load a DeepSpeed checkpoint (safely); return its step."""
        load_dir, tag = resume_location(location, self.output_dir)
        use_safe_loading(self.engine)
        path, client = self.engine.load_checkpoint(str(load_dir), tag=tag)
        if path is None:
            raise FileNotFoundError(f'no DeepSpeed checkpoint in {load_dir} '
                                    f'(tag {tag or "latest"})')
        step = int(client['global_step'])
        logger.info('resumed from %s at step %d', path, step)
        return step

    def _forward_backward(self, batch: dict) -> Dict[str, float]:
        batch = _to_device(batch, self.device)
        out = self.engine(images=batch['pixel_values'],
                          input_ids=batch['input_ids'],
                          attention_mask=batch['attention_mask'],
                          labels=batch['labels'], masks=batch['masks'])
        self.engine.backward(out.loss)
        self.engine.step()
        values = {k: float(v) for k, v in out.losses.items()}
        values['loss'] = float(out.loss.detach())
        return values

    def train(self) -> dict:
        """Run to ``total_steps``; return the first/last step records."""
        args, step = self.args, 0
        if args.resume_from_checkpoint:
            step = self.resume(args.resume_from_checkpoint)
        logger.info('training %d steps (%d samples, micro batch %d x accum %d '
                    'x %d ranks, ZeRO-%d, %s) on %s', self.total_steps,
                    len(self.dataset), self.micro_bs, self.accum, self.world,
                    self.zero_stage, compute_dtype(args), self.device)
        history: List[dict] = []
        consumed = step * self.accum  # micro-batches already trained on
        epoch, offset = divmod(consumed, self.micro_per_epoch)
        running: Dict[str, float] = {}
        tic = time.time()
        self.engine.train()
        while step < self.total_steps:
            self.sampler.set_epoch(epoch, start=offset * self.micro_bs)
            for batch in self.loader:
                for k, v in self._forward_backward(batch).items():
                    running[k] = running.get(k, 0.0) + v / self.accum
                consumed += 1
                if consumed % self.accum:
                    continue
                step += 1
                record = mean_over_ranks(running, self.world)
                running = {}
                record.update(step=step, lr=self.scheduler.get_last_lr()[0],
                              sec_per_step=time.time() - tic)
                tic = time.time()
                history.append(record)
                self._record(record)
                if args.save_steps > 0 and step % args.save_steps == 0 \
                        and step < self.total_steps:
                    save_checkpoint(self.engine, self.output_dir, step,
                                    self.zero_stage)
                if step >= self.total_steps:
                    break
            epoch, offset = epoch + 1, 0
        if history:
            final = save_checkpoint(self.engine, self.output_dir, step,
                                    self.zero_stage)
        else:  # resumed at or past the last step: nothing new to save
            final = self.output_dir / f'checkpoint-{step}'
            logger.info('nothing to train: already at step %d of %d', step,
                        self.total_steps)
        summary = dict(steps=step, checkpoint=str(final))
        if history:
            summary.update(first=history[0], last=history[-1])
        return summary

    def _record(self, record: dict) -> None:
        step = record['step']
        if step % self.args.logging_steps == 0 or step in (1, self.total_steps):
            _log_step(record, self.total_steps)
        if self.rank == 0:
            with open(self.output_dir / 'metrics.jsonl', 'a') as f:
                f.write(json.dumps(record) + '\n')


def train(args) -> dict:
    """Train with the parsed ``tools/train_llava.py`` arguments; return a
    summary (``steps``, ``checkpoint``, ``first``/``last`` step records)."""
    return LlavaTrainer(args).train()
