"""A tmux terminal inside the sandbox: the single tool of terminal tasks (Harbor / Terminus-2 style).

Keystrokes are sent in chunks (`send-keys -l`, with newlines as Enter and tmux key names like `C-c` sent as
keys). Completion is detected with `tmux wait-for`: the shell's PROMPT_COMMAND numbers every prompt it
prints and signals channel `nl-p<n>`, so after sending keys the tool waits for the *next* prompt's channel,
up to the given duration, without appending anything to the user's command line. The output of a step is the
part of the pane history that is new since the last step (by diffing `capture-pane`), or the visible screen
when the history was rewritten (`clear`, full-screen programs); long output keeps its head and tail.
"""

from __future__ import annotations

import re
import shlex

from north_lightning.envs.sandbox import DockerSandbox, SandboxError

SESSION = "main"
KEY_CHUNK_CHARS = 2048
MAX_OUTPUT_CHARS = 10_000
_TMUX_KEY = re.compile(r"^(?:[CMS]-\S|Enter|Escape|Tab|BSpace|Up|Down|Left|Right|Home|End|PageUp|PageDown|"
                       r"PPage|NPage|DC|IC|F\d{1,2})$")
PROMPT_FILE = "/tmp/.nl_prompt"
RCFILE = "/tmp/.nl_bashrc"
TMUX_CONF = "/tmp/.nl_tmux.conf"
CAPTURE_MARK = "__NL_CAPTURE__"
CAPTURE = f"echo {CAPTURE_MARK}; tmux capture-pane -p -J -S - -E - -t {SESSION}"
# PROMPT_COMMAND runs just *before* bash draws the prompt: after the signal, give it a moment to appear.
AWAIT_PROMPT = ("for _ in $(seq 25); do case \"$(tmux capture-pane -p -t " + SESSION + " | grep -v '^$' | tail -n 1)\" "
                "in *'#'|*'# ') break;; esac; sleep 0.02; done")
BASHRC = f"""[ -f ~/.bashrc ] && . ~/.bashrc
PS1='\\u@\\h:\\w# '
__nl_n=0
__nl_prompt() {{ __nl_n=$((__nl_n+1)); echo $__nl_n > {PROMPT_FILE}; tmux wait-for -S nl-p$__nl_n 2>/dev/null; }}
PROMPT_COMMAND=__nl_prompt
"""


class TerminalDied(SandboxError):
    """The tmux server or session is gone (e.g. the agent ran `tmux kill-server`)."""


def head_tail(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    """`text` if short, else its first and last `limit/2` characters around an omission note."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - 2 * half} characters omitted ...]\n{text[-half:]}"


class TmuxTerminal:
    """One tmux session running an interactive bash as the task's user, in its work directory."""

    def __init__(self, box: DockerSandbox, *, width: int = 160, height: int = 40, user: str | None = None,
                 workdir: str | None = None, max_output_chars: int = MAX_OUTPUT_CHARS):
        self.box, self.width, self.height = box, width, height
        self.user = user or box.config.user
        self.workdir = workdir or box.config.workdir
        self.max_output_chars = max_output_chars
        self._history: list[str] = []

    def _exec(self, script: str, *args: str, timeout: float = 30.0) -> tuple[int, str]:
        argv = ["bash", "-c", script, "terminal", *args]
        return self.box.exec(argv, timeout=timeout, user=self.user, workdir=self.workdir)

    def start(self) -> str:
        """Start the session and return the first screen (the prompt)."""
        self.box.put_files({RCFILE: BASHRC, TMUX_CONF: "set -g history-limit 50000\nset -g status off\n"})
        code, out = self._exec(
            f"tmux -f {TMUX_CONF} new-session -d -s {SESSION} -x {self.width} -y {self.height} "
            f"'bash --rcfile {RCFILE} -i' && timeout 10 tmux wait-for nl-p1 && {AWAIT_PROMPT}; {CAPTURE}"
        )
        if code != 0 or CAPTURE_MARK not in out:
            raise TerminalDied(f"cannot start tmux in {self.box.name} (exit {code}): {out.strip()}")
        self._history = _lines(out.split(CAPTURE_MARK + "\n", 1)[1])
        return "\n".join(self._history).strip("\n")

    def alive(self) -> bool:
        code, _ = self._exec(f"tmux has-session -t {SESSION}")
        return code == 0

    def send_keys(self, keystrokes: str, duration: float = 1.0) -> str:
        """Type `keystrokes` and return the new output once the next prompt appears or `duration` seconds
        have passed (whichever is first)."""
        script = [f"k=$(cat {PROMPT_FILE} 2>/dev/null || echo 0)"]
        args: list[str] = []
        for kind, value in _split_keys(keystrokes):
            if kind == "literal":
                for i in range(0, len(value), KEY_CHUNK_CHARS):
                    args.append(value[i : i + KEY_CHUNK_CHARS])
                    script.append(f'tmux send-keys -t {SESSION} -l -- "${{{len(args)}}}" || exit 90')
            else:
                script.append(f"tmux send-keys -t {SESSION} {shlex.quote(value)} || exit 90")
        wait = max(0.0, duration)
        if wait > 0:
            script.append(f"timeout {wait:.2f} tmux wait-for nl-p$((k+1)) && {{ {AWAIT_PROMPT}; }}")
        script += [f"tmux has-session -t {SESSION} 2>/dev/null || exit 91", CAPTURE]
        code, out = self._exec("\n".join(script), *args, timeout=wait + 30)
        if code in (90, 91) or CAPTURE_MARK not in out:
            raise TerminalDied(f"the tmux session in {self.box.name} is gone: {out.strip()[:500]}")
        return head_tail(self._new_output(_lines(out.split(CAPTURE_MARK + "\n", 1)[1])), self.max_output_chars)

    def screen(self) -> str:
        """The visible pane."""
        code, out = self._exec(f"tmux capture-pane -p -J -t {SESSION}")
        if code != 0:
            raise TerminalDied(f"the tmux session in {self.box.name} is gone: {out.strip()[:500]}")
        return out.rstrip("\n")

    def _new_output(self, new: list[str]) -> str:
        """Lines added since the last capture, starting with the line the keys were typed on (it held the
        prompt and now shows the command). When the start of the history scrolled away, the old last lines
        are looked up instead; when the history was rewritten (`clear`), the visible screen is the output."""
        old, self._history = self._history, new
        anchor = len(old) - 1
        if old and len(new) >= len(old) and new[:anchor] == old[:anchor]:
            return "\n".join(new[anchor:])
        tail = old[-4:-1]
        if tail:
            for j in range(len(new) - len(tail), -1, -1):
                if new[j : j + len(tail)] == tail:
                    return "\n".join(new[j + len(tail):])
        return self.screen()


def _lines(capture: str) -> list[str]:
    lines = capture.rstrip("\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _split_keys(keystrokes: str) -> list[tuple[str, str]]:
    """Keystrokes -> ("key", tmux key name) / ("literal", text) parts; newlines become Enter."""
    if _TMUX_KEY.match(keystrokes.strip()) and "\n" not in keystrokes.strip():
        return [("key", keystrokes.strip())]
    parts: list[tuple[str, str]] = []
    for i, line in enumerate(keystrokes.split("\n")):
        if i > 0:
            parts.append(("key", "Enter"))
        if line:
            parts.append(("literal", line))
    return parts
