"""sortednet generate"""

from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ..cli import hydra_command
from ..decode import ExitDecoder, teacher_forced_agreement
from ..engine.eval_grid import open_decoder
from ..errors import UserError
from ..jsonfiles import write_json
from ..reports.console import make_console


def statistics_line(stats: dict) -> str:
    parts = [f"{stats['new_tokens']} tokens in {stats['seconds']:.2f} s ({stats['tokens_per_second']:.1f} tokens/s)"]
    if stats["mode"] == "speculative":
        rate = stats["acceptance_rate"]
        drafted = f"{stats['drafted']} drafted" if stats.get("draft_width", 1) == 1 else f"{stats['drafted']} tree levels of {stats['draft_width']}"
        parts.append(f"acceptance {'n/a' if rate is None else f'{rate:.1%}'} of {drafted}")
        parts.append(f"{stats['tokens_per_verification']:.2f} tokens per verification ({stats['rounds']} verifications)")
        if "chosen" in stats:
            parts.append(f"chosen {', '.join(stats['chosen'][:3])}")
    if stats["mode"] == "early_exit":
        parts.append(f"mean exit layer {stats['mean_exit_layer']:.2f}")
    if "agreement" in stats:
        parts.append(f"agreement with the full model {stats['agreement']:.1%}")
    if stats.get("stop_reason") == "context_limit":
        parts.append(f"stopped at the model's context ({stats['context_limit']} tokens)")
    return "; ".join(parts)


@hydra_command("generate")
def main(cfg: DictConfig) -> None:
    console = make_console()
    decoder_run = open_decoder(cfg.checkpoint, cfg.device.value, cfg.threads, console)
    settings, depth = cfg.generate, decoder_run.depth
    prompt_ids = decoder_run.encode(cfg.prompt, settings.chat, settings.system)
    # An instruction-tuned model ends its response with the end-of-sequence token.
    eos_id = decoder_run.tokenizer.eos_token_id if settings.chat else None
    decoder = ExitDecoder(decoder_run.model)
    mode = settings.mode.value
    n = settings.max_new_tokens
    if mode == "early_exit" and (settings.temperature != 0 or settings.top_k is not None):
        raise UserError("generate.mode=early_exit is greedy: generate.temperature and generate.top_k apply to the other modes")
    if mode == "full":
        result = decoder.full(prompt_ids, n, settings.temperature, settings.top_k, settings.seed, eos_id)
    elif mode == "exit":
        exit_layer = settings.exit if settings.exit is not None else max(1, depth // 2)
        result = decoder.exit(prompt_ids, n, exit_layer, settings.temperature, settings.top_k, settings.seed, eos_id)
    elif mode == "early_exit":
        result = decoder.early_exit(prompt_ids, n, settings.threshold, eos_id=eos_id)
    else:
        draft_exit = settings.draft_exit if settings.draft_exit is not None else max(1, depth // 4)
        result = decoder.speculative(prompt_ids, n, draft_exit, settings.draft_len, settings.temperature, settings.top_k, settings.seed,
                                     eos_id=eos_id, draft_width=settings.draft_width, draft_stop=settings.draft_stop)
    stats = dict(result.stats)
    if mode == "early_exit" or (mode == "exit" and settings.temperature == 0):
        stats["agreement"] = teacher_forced_agreement(decoder_run.model, prompt_ids, result.tokens)
    text = decoder_run.decode(result.tokens[:-1] if eos_id is not None and result.tokens[-1:] == [eos_id] else result.tokens)
    console.print((cfg.prompt + "\n" if settings.chat else cfg.prompt) + text, highlight=False, markup=False)
    console.print(f"[dim]{mode}: {statistics_line(stats)} ({decoder_run.model.hf.config.num_hidden_layers} layers, "
                  f"{torch.get_num_threads()} threads)[/]", highlight=False)
    write_json(Path(HydraConfig.get().runtime.output_dir) / "generation.json",
               {"checkpoint": str(decoder_run.run.path), "prompt": cfg.prompt, "text": text, "tokens": result.tokens, "stats": stats})
