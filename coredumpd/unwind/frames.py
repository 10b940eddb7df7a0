"""The emitted frames: recursion folded into counted runs, the middle dropped past the cap."""

from __future__ import annotations

from coredumpd.unwind.types import Caps, Frame

BOTTOM_FRAMES = 16  # frames kept from the bottom of the stack when the frame cap is hit

class FrameList:
    """The emitted frames: recursion folded into counted runs, the middle dropped past the cap.

    Past ``max_frames`` the oldest frames of the bottom part are dropped, so the
    first frames (the crash) and the last ones (main, _start) both stay.
    """

    def __init__(self, caps: Caps) -> None:
        self.caps = caps
        self.frames: list[Frame] = []
        self.elided = 0
        self.keep_head = max(caps.max_frames - BOTTOM_FRAMES, 1)
        self.cycle: Cycle | None = None

    def add(self, frame: Frame) -> bool:
        """Keep ``frame`` or fold it into a run; True when it was kept as a frame
        (or may be: it is part of a cycle instance not yet complete)."""
        if self.cycle is not None:
            if self.cycle.takes(frame):
                return bool(self.cycle.pending)
            self._end_cycle()
        kept = _append(self.frames, frame, self.caps.collapse_after)
        if kept:
            self._cap()
            self.cycle = Cycle.starting(self.frames, self.caps)
        return kept

    def _end_cycle(self) -> None:
        """The cycle stops folding; an instance cut short keeps its frames as frames."""
        assert self.cycle is not None
        for unfolded in self.cycle.pending:
            self.frames.append(unfolded)
            self._cap()
        self.cycle = None

    def _cap(self) -> None:
        """Past ``max_frames``, drop the oldest frame of the bottom part."""
        if len(self.frames) > self.caps.max_frames:
            dropped = self.frames.pop(self.keep_head)
            self.elided += dropped.repeat

    def elided_reason(self) -> str | None:
        if not self.elided:
            return None
        return (f"{self.elided} frames omitted after frame {self.keep_head - 1} "
                f"(cap of {self.caps.max_frames} frames)")

    def result(self) -> list[Frame]:
        if self.cycle is not None:
            self._end_cycle()
        for index, frame in enumerate(self.frames):
            frame.index = index
        return self.frames


class Cycle:
    """Mutual recursion being folded: the last ``len(template)`` kept frames are one
    instance of the cycle; each further complete instance adds 1 to their ``repeat``."""

    def __init__(self, template: list[Frame]) -> None:
        self.template = template
        self.pending: list[Frame] = []  # frames of the instance now being matched

    @staticmethod
    def starting(frames: list[Frame], caps: Caps) -> Cycle | None:
        """A cycle of 2..max_cycle frames that the last frames repeat (at least
        ``collapse_after`` frames and two instances, none of them folded yet)."""
        checked = 0  # the span whose frames are known to be unfolded
        for period in range(2, caps.max_cycle + 1):
            span = max(caps.collapse_after, 2 * period)
            if len(frames) < span:
                break
            tail = frames[-span:]
            if span != checked:  # periods share a span (collapse_after): check it once
                if any(frame.repeat > 1 or frame.cycle > 1 for frame in tail):
                    return None
                checked = span
            template = tail[-period:]
            if len({frame.pc for frame in template}) < period:
                continue  # a shorter cycle repeats inside it
            if all(tail[i].pc == tail[i + period].pc and tail[i].trust is tail[i + period].trust
                   for i in range(span - period)):
                return Cycle(template)
        return None

    def takes(self, frame: Frame) -> bool:
        """Fold ``frame`` when it continues the cycle (True)."""
        expected = self.template[len(self.pending)]
        if frame.pc != expected.pc or frame.trust is not expected.trust:
            return False
        self.pending.append(frame)
        if len(self.pending) == len(self.template):
            for member in self.template:
                member.repeat += 1
                member.cycle = len(self.template)
            self.pending = []
        return True


def _extends_run(frames: list[Frame], frame: Frame) -> bool:
    return bool(frames) and frames[-1].pc == frame.pc and frames[-1].repeat > 1 \
        and frames[-1].cycle == 1


def _append(frames: list[Frame], frame: Frame, collapse_after: int) -> bool:
    """Append ``frame`` (True), or fold it into a counted run of identical frames (False)."""
    if _extends_run(frames, frame):
        frames[-1].repeat += 1
        return False
    run = 0
    for previous in reversed(frames):
        if previous.pc != frame.pc or previous.trust is not frame.trust or previous.cycle > 1:
            break
        run += 1
    if run >= collapse_after:
        frames[-1].repeat += 1
        return False
    frames.append(frame)
    return True
