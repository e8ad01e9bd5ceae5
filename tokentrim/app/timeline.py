"""Prompt timelines (`tokentrim generate --timeline FILE`): prompts with the latent frame each one starts at.

Accepted files (docs/longlive.md#2-timelines):
- YAML, a list of entries `{prompt: TEXT, start: FRAME}` (the first entry's start is 0 or omitted), or a mapping
  with that list under `timeline:`;
- JSONL, one such entry per line;
- LongLive's form, as YAML or as a one-line JSONL: `{prompts: [p0, ..., pK-1], switch_frame_indices: [f1, ...]}`
  with K - 1 switch frames (a list, one number, or a comma-separated string as LongLive's configs write it).

Frames count latent frames (LongLive's convention). A switch takes effect at the first block boundary at or after
its frame: with 3-frame blocks, switches at 40, 80 happen at 42, 81, as in LongLive.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokentrim.errors import UserError, shorten


@dataclass(frozen=True)
class Timeline:
    prompts: tuple[str, ...]
    starts: tuple[int, ...]  # the frame each prompt was asked to start at; starts[0] == 0

    def switch_frames(self, block: int, observed: int, num_frames: int) -> list[int]:
        """The block boundaries at which prompts 1.. take effect, checked against the video's frames."""
        frames = [-(-start // block) * block for start in self.starts[1:]]
        for k, (start, frame) in enumerate(zip(self.starts[1:], frames, strict=True), 1):
            if frame >= num_frames:
                raise UserError(
                    f"timeline: prompt {k + 1} starts at frame {start} (block boundary {frame}), not "
                    f"before the video's end ({num_frames} latent frames); add frames or move it"
                )
            if frame <= observed:
                raise UserError(
                    f"timeline: prompt {k + 1} starts at frame {start}, within the {observed} observed "
                    "frames; switches come after them"
                )
        for k in range(1, len(frames)):
            if frames[k] == frames[k - 1]:
                raise UserError(
                    f"timeline: prompts {k + 1} and {k + 2} start in the same {block}-frame block "
                    f"(frames {self.starts[k]} and {self.starts[k + 1]}); move them a block apart"
                )
        return frames

    def settings(self, switch_frames: list[int]) -> list[dict]:
        """The decision log's record: each prompt with the frame asked and the frame it took effect."""
        effective = [0, *switch_frames]
        return [
            {"prompt": p, "start": s, "frame": f}
            for p, s, f in zip(self.prompts, self.starts, effective, strict=True)
        ]


def read_timeline(path: str | Path) -> Timeline:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--timeline {path} not found") from None
    except IsADirectoryError:
        raise UserError(f"--timeline {path} is a folder; give a .yaml or .jsonl file") from None
    except UnicodeDecodeError:
        raise UserError(f"--timeline {path} is not a UTF-8 text file (YAML or JSONL)") from None
    except OSError as err:
        raise UserError(f"cannot read --timeline {path}: {err.strerror}") from None
    data = _parse(path, text)
    if isinstance(data, dict) and "prompts" in data:
        return _longlive(path, data)
    if isinstance(data, dict) and "timeline" in data:
        data = data["timeline"]
    if not isinstance(data, list) or not data:
        raise UserError(
            f"{path}: expected a list of {{prompt, start}} entries or {{prompts, switch_frame_indices}}"
        )
    prompts, starts = [], []
    for i, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or set(entry) - {"prompt", "start"} or "prompt" not in entry:
            raise UserError(
                f"{path}: entry {i} must be {{prompt: TEXT, start: FRAME}}, got {shorten(str(entry))}"
            )
        start = entry.get("start", 0 if i == 1 else None)
        if start is None:
            raise UserError(f"{path}: entry {i} needs a start frame (`start: FRAME`)")
        prompts.append(entry["prompt"])
        starts.append(start)
    return _checked(path, prompts, starts)


def _parse(path: Path, text: str):
    if not text.strip():
        raise UserError(f"--timeline {path} is empty")
    if path.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{n}: not a JSON line ({err.msg})") from None
        if len(rows) > 1 and all(isinstance(r, dict) and "prompts" in r for r in rows):
            raise UserError(
                f"{path} holds {len(rows)} LongLive timelines (one video per line); --timeline takes "
                "one: keep one line"
            )
        return rows[0] if len(rows) == 1 and isinstance(rows[0], dict) and "prompts" in rows[0] else rows
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise UserError(f"{path}{line}: not valid YAML ({getattr(err, 'problem', None) or err})") from None


def _longlive(path: Path, data: dict) -> Timeline:
    if set(data) - {"prompts", "switch_frame_indices"}:
        raise UserError(
            f"{path}: unknown keys {sorted(set(data) - {'prompts', 'switch_frame_indices'})}; "
            "LongLive's form has prompts and switch_frame_indices"
        )
    prompts = data["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise UserError(f"{path}: `prompts` must be a non-empty list of prompts")
    raw = data.get("switch_frame_indices", [])
    if isinstance(raw, str):
        try:
            raw = [int(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise UserError(
                f"{path}: switch_frame_indices {raw!r} must be comma-separated frame numbers"
            ) from None
    elif isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise UserError(f"{path}: switch_frame_indices must be a list of frame numbers")
    if len(raw) != len(prompts) - 1:
        raise UserError(
            f"{path}: {len(prompts)} prompts need {len(prompts) - 1} switch_frame_indices, got {len(raw)}"
        )
    return _checked(path, prompts, [0, *raw])


def _checked(path: Path, prompts: list, starts: list) -> Timeline:
    for i, (p, s) in enumerate(zip(prompts, starts, strict=True), 1):
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"{path}: prompt {i} must be a non-empty text")
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise UserError(f"{path}: prompt {i}'s start must be a latent frame number >= 0, got {s!r}")
    if starts[0] != 0:
        raise UserError(f"{path}: the first prompt starts the video (start 0), got start {starts[0]}")
    for i in range(1, len(starts)):
        if starts[i] <= starts[i - 1]:
            raise UserError(
                f"{path}: switch frames must increase: prompt {i + 1} starts at {starts[i]}, "
                f"prompt {i} at {starts[i - 1]}"
            )
    if len(prompts) < 2:
        raise UserError(f"{path}: a timeline has at least two prompts; for one prompt use --prompt")
    return Timeline(tuple(prompts), tuple(starts))
